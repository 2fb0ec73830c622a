"""Generic helpers at the bottom of the stack: stdlib only, nothing of the router's own.

stopping (a task cancelled until it ends), files (opening without following a symlink),
processes (the warden that stops what the router started once it is gone, sealing inherited
descriptors) and sharing (one object for equal values built at load time). Every other layer
may use them; they import nothing from the package.
"""
