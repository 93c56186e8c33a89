"""Test-only: steps this process's wall clock, as NTP or an RTC-less boot would.

Put this folder on PYTHONPATH and name a file in SENSOR_EDGE_TEST_CLOCK_FILE;
time.time() (and time_ns) then add the seconds written in that file, read
again every 50 ms. The monotonic clock is left alone, as on a real system.
"""

import os
import time

_path = os.environ.get("SENSOR_EDGE_TEST_CLOCK_FILE")
if _path:
    _real_time, _real_time_ns, _monotonic = time.time, time.time_ns, time.monotonic
    _state = {"offset": 0.0, "read_at": float("-inf")}

    def _offset() -> float:
        now = _monotonic()
        if now - _state["read_at"] > 0.05:
            _state["read_at"] = now
            try:
                with open(_path) as f:
                    _state["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _state["offset"]

    def _time() -> float:
        return _real_time() + _offset()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time = _time
    time.time_ns = _time_ns
