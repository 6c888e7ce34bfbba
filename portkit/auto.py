"""`import portkit.auto` as a script's first line: the script then runs on the active backend
unchanged, exactly as under `portkit exec` (portkit.adapt). The backend is PORTKIT_BACKEND,
else the best available one."""
from portkit import adapt

backend = adapt.activate()
