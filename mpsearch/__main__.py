from mpsearch.apps.cli import main

raise SystemExit(main())
