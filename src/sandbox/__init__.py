"""Operating-system containment for code that a language model wrote.

``bubblewrap``: the Linux mode (``bwrap``: namespaces and mounts, no root needed). ``landlock``: the Linux fallback
where bubblewrap cannot start (the kernel's Landlock, plus a seccomp filter and a supervising launcher).
``seatbelt``: macOS (``sandbox-exec`` with a profile written per run). ``job_object``: Windows, where there is no
sandbox yet, only a Job Object that limits the program and ends all it started. ``paths``: what every mode hides or
lets Python read. The process control around them (launcher, timeouts, limits, output, killing every descendant) is
``src/workflows/company/sandbox.py`` for now; both move here together with the rest of the layout (issue 14).
"""
