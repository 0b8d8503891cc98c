"""Runs a command and prints its peak resident memory (getrusage's largest
child), failing where it reaches LIMIT_MIB:

    python3 peak_rss.py LIMIT_MIB COMMAND [ARG...]"""
import resource
import subprocess
import sys


def main():
    limit = int(sys.argv[1])
    code = subprocess.run(sys.argv[2:]).returncode
    sys.stdout.flush()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024  # KiB on Linux
    print(f"peak RSS {peak} MiB, {'under' if peak < limit else 'NOT under'} {limit} MiB")
    sys.exit(code or int(peak >= limit))


if __name__ == "__main__":
    main()
