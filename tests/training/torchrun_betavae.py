"""``python -m betavae`` as torchrun starts it, then the number of gloo threads the process has left.

Leaving the process group must free the group, so that its worker threads are joined before the
interpreter exits; a group left alive lets a worker still freeing a collective's tensors abort the
process at exit ("terminate called without an active exception") after a run that finished well.
The tests run every torchrun process through this file and expect 0 on the last line.
"""

import os
import sys

from betavae.cli import main


def gloo_threads() -> int:
    """Threads of this process whose name says gloo (``pt_gloo_runloop``, ``gloo_tcp_loop``), from Linux's /proc."""
    tasks = "/proc/self/task"
    names = []
    for task in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, task, "comm")) as comm:
                names.append(comm.read().strip())
        except OSError:  # the thread ended while we looked
            pass
    return sum("gloo" in name for name in names)


code = main()
if sys.platform == "linux":  # /proc/self/task is Linux's; the tests expect the line on Linux only
    print(f"gloo threads left: {gloo_threads()}", file=sys.stderr, flush=True)
sys.exit(code)
