"""splunkd's entry to the modular input `defender_forwarder://` of TA-defender-forwarder.

Puts the add-on's libraries on the path: bin/lib (pure Python, any Python) and the compiled
ones of the Python and machine splunkd runs this with, bin/lib/3rdparty/cp<XY>_<machine>.
Without them (a Python or machine the package was not built for) it says so in one line,
which splunkd files in splunkd.log, and ends.
"""
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.join(HERE, "lib")
TAG = "cp%d%d_%s" % (sys.version_info[0], sys.version_info[1], platform.machine().lower())
COMPILED = os.path.join(LIB, "3rdparty", TAG)


def unsupported() -> str:
    built = sorted(os.listdir(os.path.join(LIB, "3rdparty"))) if os.path.isdir(os.path.join(LIB, "3rdparty")) else []
    return ("FATAL TA-defender-forwarder: splunkd runs this input with Python %s on %s (%s), which this package "
            "was not built for (it carries %s); set python.required = 3.13 in inputs.conf, or build the package "
            "for this one: defender-forwarder splunk-app build --target %d.%d-%s\n"
            % (platform.python_version(), platform.machine(), TAG, ", ".join(built) or "none",
               sys.version_info[0], sys.version_info[1], platform.machine().lower()))


if __name__ == "__main__":
    if sys.version_info < (3, 11) or not os.path.isdir(COMPILED):
        sys.stderr.write(unsupported())
        sys.exit(2)
    sys.path[:0] = [COMPILED, LIB]
    from core.app.splunk_input import main

    sys.exit(main())
