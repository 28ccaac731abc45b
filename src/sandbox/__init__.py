"""Operating-system containment for code that a language model wrote.

``bubblewrap``: the Linux mode (``bwrap``: namespaces and mounts, no root needed). The process control around it
(timeouts, limits, output, killing every descendant) is ``src/workflows/company/sandbox.py`` for now; both move
here together with the rest of the layout (issue 14).
"""
