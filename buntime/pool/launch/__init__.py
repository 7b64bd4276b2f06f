"""
How worker processes are started, on the runtime side.

A launcher starts one worker process for a L{LaunchSpec}, connects the given
runtime-side AMP protocol to it, and reports what the process writes as
L{Write}s: each write to C{sys.stdout}/C{sys.stderr} from its output channel
(fd 5), and the raw lines of fds 1 and 2.
L{SpawnLauncher} starts a fresh interpreter per worker
(C{python -m buntime.pool.child}, ~250 ms with Twisted);
L{ForkLauncher} asks a pre-started template process
(L{buntime.pool.launch.template}) to fork one, so a cold start costs a fork and the
app's import.
"""
