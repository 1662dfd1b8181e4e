#!/usr/bin/env python3
"""What a real TCP socket sees: connect to HOST PORT and print one word.

  connect.py HOST PORT TIMEOUT            -> "ok <first line read>", an errno name
                                             (ECONNREFUSED, EHOSTUNREACH, ...) or "timeout"
  connect.py --serve-peer HOST PORT       -> a server that answers each connection with the
                                             client's address as it sees it, "ADDR:PORT"
  connect.py --hold HOST PORT SECONDS     -> keep one connection to an echo server, send a line
                                             every 0.2 s and check it comes back; print
                                             "ok <n>" after SECONDS, or "<errno> <n>" when the
                                             connection fails after n good exchanges.
A line "ready" is printed once a --hold connection is up.
"""
import errno
import socket
import sys
import time


def name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__


def once(host, port, timeout):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        s.settimeout(0.5)
        data = b""
        try:
            data = s.recv(100)
        except socket.timeout:
            pass
        print("ok", data.decode(errors="replace").strip())
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print(name(e))
    finally:
        s.close()


def hold(host, port, seconds):
    s = socket.create_connection((host, port), timeout=3)
    s.settimeout(3)
    print("ready", flush=True)
    n = 0
    end = time.time() + seconds
    try:
        while time.time() < end:
            msg = b"line %d\n" % n
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    raise ConnectionResetError(errno.ECONNRESET, "closed")
                got += chunk
            if got != msg:
                print("EBADMSG", n)
                return
            n += 1
            time.sleep(0.2)
        print("ok", n)
    except socket.timeout:
        print("timeout", n)
    except OSError as e:
        print(name(e), n)


def serve_peer(host, port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(16)
    while True:
        c, peer = srv.accept()
        try:
            c.sendall(b"%s:%d\n" % (peer[0].encode(), peer[1]))
        except OSError:
            pass
        c.close()


if __name__ == "__main__":
    if sys.argv[1] == "--serve-peer":
        serve_peer(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "--hold":
        hold(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        once(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
    sys.stdout.flush()
