"""apex.amp / apex.parallel imported in each form scripts use; prints the message each gives."""
import json
import sys

out = {}
for form in ["import apex.amp", "from apex import amp", "from apex.parallel import DistributedDataParallel",
             "from apex.amp import initialize"]:
    try:
        exec(form)
        out[form] = "imported"
    except ImportError as e:
        out[form] = str(e)
print(json.dumps(out))
