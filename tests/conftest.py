"""Keep the tests' cached precision verdicts out of the user's cache directory."""

import os
import tempfile

os.environ["GENFORGE_CACHE"] = tempfile.mkdtemp(prefix="genforge-test-cache-")
