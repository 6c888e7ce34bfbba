"""On PYTHONPATH of the plain-torch reference runs (conformance `unchanged`, the exec tests),
imported by every interpreter they start: a short sleep at exit hands gloo's threads the GIL
before the interpreter finalizes, so torch alone does not abort after its work, as
portkit.runtime.release_gloo_at_exit does in portkit's own processes (it says how gloo aborts).
Nothing else: the reference imports neither portkit nor anything it would not import itself."""
import atexit
import time

atexit.register(time.sleep, 0.05)
