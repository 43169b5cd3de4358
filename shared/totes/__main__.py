from totes.cli import main

raise SystemExit(main())
