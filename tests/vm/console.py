#!/usr/bin/env python3
"""console.py - read the QEMU guest's serial console from stdin (run.sh pipes qemu into it).

    console.py OUTDIR T0 [QEMU_PIDFILE]

For every line it
  * echoes the line (control and ANSI escape sequences removed) to stdout,
  * appends "[host seconds since T0] line" to OUTDIR/console.log (time-stamped raw record),
  * appends the clean line to OUTDIR/guest.log (what run.sh greps for markers and test results),
  * records "@@MARK name guest_uptime=..." lines with their host-side elapsed time in
    OUTDIR/marks.txt (the first mark shares its line with SeaBIOS escape codes, hence the search),
  * copies the block between "===== RIG-TOPOLOGY BEGIN/END =====" to OUTDIR/topology.env.
It also reads QEMU's peak resident set (VmHWM) through the pidfile whenever a line arrives and
writes the last value seen to marks.txt at EOF (VmHWM only grows, so the last read is the peak
up to the guest's last line).
"""
import os
import re
import sys
import time

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[@-~])")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    return CONTROL.sub("", ANSI.sub("", text))


class QemuRss:
    """Peak RSS of the qemu process, read from /proc/PID/status (VmHWM, kB)."""

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.pid = None
        self.peak_kb = 0

    def sample(self):
        if not self.pidfile:
            return
        try:
            if self.pid is None:
                with open(self.pidfile) as f:
                    self.pid = int(f.read().strip())
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass


def main():
    outdir, t0 = sys.argv[1], float(sys.argv[2])
    rss = QemuRss(sys.argv[3] if len(sys.argv) > 3 else None)
    log = open(os.path.join(outdir, "console.log"), "w")
    guest = open(os.path.join(outdir, "guest.log"), "w")
    marks = open(os.path.join(outdir, "marks.txt"), "w")
    topology = None
    first = True
    buf = b""

    def handle(raw: bytes):
        nonlocal first, topology
        elapsed = time.time() - t0
        line = clean(raw)
        rss.sample()
        if first:
            marks.write("first_console_output host_elapsed=%.3f\n" % elapsed)
            first = False
        log.write("[%8.3f] %s\n" % (elapsed, line))
        log.flush()
        guest.write(line + "\n")
        guest.flush()
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        k = line.find("@@MARK ")
        if k >= 0:
            marks.write("%s host_elapsed=%.3f\n" % (line[k + 7:], elapsed))
            marks.flush()
        if line == "===== RIG-TOPOLOGY END =====" and topology:
            topology.close()
            topology = None
        elif topology:
            topology.write(line + "\n")
        elif line == "===== RIG-TOPOLOGY BEGIN =====":
            topology = open(os.path.join(outdir, "topology.env"), "w")

    stdin = sys.stdin.buffer
    while True:
        chunk = stdin.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            handle(raw)
    if buf:
        handle(buf)
    marks.write("console_eof host_elapsed=%.3f\n" % (time.time() - t0))
    if rss.peak_kb:
        marks.write("qemu_peak_rss_mb=%d\n" % (rss.peak_kb // 1024))
    marks.close()


if __name__ == "__main__":
    main()
