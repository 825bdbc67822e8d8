"""``python -m server``: the node's command line, which lives with the other launchers in ``launch.node``.

An entry point, not part of the node: it may compose the node with the embedded producer because
it is the edge of the program (the ``server`` package itself never imports ``producer``).
"""

from launch.node import main

if __name__ == "__main__":
    main()
