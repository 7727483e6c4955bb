"""``python -m skuforge_cli ...``: the ``skuforge`` command without the console script."""

from skuforge_cli.main import main

raise SystemExit(main())
