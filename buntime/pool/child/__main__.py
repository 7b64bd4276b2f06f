"""C{python -m buntime.pool.child}: run one worker."""

from buntime.pool.child.main import main

main()
