"""The command line: the parser and its options, and what each command does.

Every command returns its exit status to ``main``; nothing below this layer ends the process.
"""
