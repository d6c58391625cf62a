import sys

from audiossl.cli.main import main

sys.exit(main())
