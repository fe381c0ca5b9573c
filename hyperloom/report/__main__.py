"""``python -m hyperloom.report TRACE_DIR [-o report.html]``."""

from hyperloom.report import main

raise SystemExit(main())
