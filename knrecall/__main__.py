from knrecall.cli import main

raise SystemExit(main())
