# A socket client for the Service tests: what an application sees. Prints one JSON object.
#   tcp HOST PORT            connect, getpeername, one echoed line
#   udp HOST PORT            unconnected sendto/recvfrom (glibc's resolver, and musl's: a
#                            reply whose source is not HOST:PORT is not accepted)
#   udp-connected HOST PORT  connect, send, recv, getpeername
#   udp-hold HOST PORT       udp-connected, then waits for a line on stdin and exchanges
#                            once more on the same socket (a resolver's long-lived socket);
#                            prints a JSON object after each exchange
import errno, json, socket, sys

mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
try:
    if mode == "tcp":
        s = socket.create_connection((host, port), timeout=2)
        out["peer"] = "%s:%d" % s.getpeername()
        s.sendall(b"ping\n")
        out["reply"] = s.makefile().readline().strip()
    elif mode == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"ping", (host, port))
        data, src = s.recvfrom(2048)
        out["from"] = "%s:%d" % src
        out["reply"] = data.decode()
        out["accepted"] = src == (host, port)
    elif mode == "udp-connected":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect((host, port))
        s.send(b"ping")
        out["reply"] = s.recv(2048).decode()
        out["peer"] = "%s:%d" % s.getpeername()
    elif mode == "udp-hold":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect((host, port))
        s.send(b"ping")
        print(json.dumps({"reply": s.recv(2048).decode()}), flush=True)
        sys.stdin.readline()
        s.send(b"again")
        out["reply"] = s.recv(2048).decode()
    else:
        raise SystemExit("unknown mode " + mode)
except OSError as e:
    out["error"] = errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
print(json.dumps(out))
