#!/usr/bin/env python3
"""Open-loop load on one URL: RATE requests a second for at most SECONDS (or
until the file STOP exists), each latency measured from the moment the
request was due (so a slow server cannot hide its queueing). Prints the
requests sent, the achieved rate, errors, and p50/p90/p99/max in ms.

Usage: status_load.py URL --rate 500 --seconds 30 [--user admin:pw] [--stop FILE] [--connections 16]
"""
import argparse, base64, http.client, os, queue, threading, time, urllib.parse


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--user", default="")
    parser.add_argument("--stop", default="")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    path = url.path + ("?" + url.query if url.query else "")
    headers = {}
    if args.user:
        headers["Authorization"] = "Basic " + base64.b64encode(args.user.encode()).decode()
    due = queue.Queue()
    latencies, errors, lock = [], [0], threading.Lock()

    def client():
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        while True:
            at = due.get()
            if at is None:
                return
            delay = at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            elapsed = time.perf_counter() - at
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.connections)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    sent = 0
    while True:
        now = time.perf_counter() - start
        if now >= args.seconds or (args.stop and os.path.exists(args.stop)):
            break
        while sent < now * args.rate:
            due.put(start + sent / args.rate)
            sent += 1
        time.sleep(0.002)
    for _ in threads:
        due.put(None)
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(p):
        return 1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")

    print(f"sent {sent} in {elapsed:.1f}s ({sent / elapsed:.0f}/s), ok {len(ordered)}, errors {errors[0]}, "
          f"p50 {pct(50):.1f} ms, p90 {pct(90):.1f} ms, p99 {pct(99):.1f} ms, max {1000 * ordered[-1] if ordered else float('nan'):.1f} ms")


if __name__ == "__main__":
    main()
