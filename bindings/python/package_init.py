"""(Installed as sotto/__init__.py by bindings/scripts/build-python.sh.)

Sotto: private messages over Sotto relays (docs/bindings.md).

The API is UniFFI's generated module, `sotto._ffi`, re-exported here whole. This file adds
one thing: at interpreter exit it waits (one second at most) for the library's threads to
leave any call into Python they are in, since CPython aborts the process when such a
thread asks for the interpreter once its finalisation has begun.
"""

import atexit as _atexit

from ._ffi import *  # noqa: F401,F403
from ._ffi import __all__, settle_host_calls as _settle_host_calls  # noqa: F401

_atexit.register(_settle_host_calls, 1000)
