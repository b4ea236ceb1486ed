"""``python -m llm_dit.cli``: the same CLI as the ``llm-dit`` script."""

import sys

from llm_dit.cli import main

sys.exit(main())
