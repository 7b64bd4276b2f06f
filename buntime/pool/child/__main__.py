"""C{python -m buntime.pool.child}: run one worker."""

from buntime.cpus import take_cpus
from buntime.pool.child.main import main

take_cpus()  # first: the CPUs the runtime gave its workers (RUNTIME_WORKER_CPUS)
main()
