"""The command line: argparse and the commands; the only place that ends the process."""
