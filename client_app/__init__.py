"""The ClientApp package; the clock below times the app's own imports (a device's cold start)."""

import time

IMPORT_STARTED = time.perf_counter()
