"""C{python -m buntime.pool.child}: run one worker."""

from buntime._libc import hide_environment_values
from buntime.cpus import take_cpus
from buntime.pool.child.main import main
from buntime.sensitive import is_sensitive

take_cpus()  # first: the CPUs the runtime gave its workers (RUNTIME_WORKER_CPUS)
# A secret the manifest passes on (envAllow, also in WORKER_CONFIG) is this
# app's: the other apps' workers (the same user) must not read it in
# /proc/<pid>/environ.  (A forked worker's shows the template's environment.)
hide_environment_values(lambda name: name == "WORKER_CONFIG" or is_sensitive(name))
main()
