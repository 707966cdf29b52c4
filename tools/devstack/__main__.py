"""`python -m tools.devstack up|down|clean|status|env`."""

from tools.devstack.stack import main

raise SystemExit(main())
