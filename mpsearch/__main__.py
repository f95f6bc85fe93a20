from mpsearch.cli import main

raise SystemExit(main())
