# A socket client for the Service tests: what an application sees. Prints one JSON object.
#   tcp HOST PORT            connect, getpeername, one echoed line
#   udp HOST PORT            unconnected sendto/recvfrom (glibc's resolver, and musl's: a
#                            reply whose source is not HOST:PORT is not accepted)
#   udp-connected HOST PORT  connect, send, recv, getpeername
#   udp-hold HOST PORT       udp-connected, then waits for a line on stdin and exchanges
#                            once more on the same socket (a resolver's long-lived socket);
#                            prints a JSON object after each exchange
#   dns HOST PORT NAME       an A query over UDP, as musl's resolver asks it: the reply is
#                            accepted only from HOST:PORT
#   dns-tcp HOST PORT NAME   the same over TCP (length-prefixed)
import errno, json, socket, struct, sys


def dns_query(name):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def skip_name(m, i):
    while m[i] != 0:
        if m[i] & 0xC0 == 0xC0:
            return i + 2
        i += m[i] + 1
    return i + 1


def dns_answer(m):
    qid, flags, qd, an = struct.unpack(">HHHH", m[:8])
    i = 12
    for _ in range(qd):
        i = skip_name(m, i) + 4
    addrs = []
    for _ in range(an):
        i = skip_name(m, i)
        rtype, _, _, rdlen = struct.unpack(">HHIH", m[i:i + 10])
        i += 10
        if rtype == 1:
            addrs.append(socket.inet_ntoa(m[i:i + 4]))
        i += rdlen
    rcodes = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
    return {"id_ok": qid == 0x1234, "rcode": rcodes.get(flags & 0xF, str(flags & 0xF)), "addrs": addrs}


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
    elif mode == "dns":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(dns_query(sys.argv[4]), (host, port))
        data, src = s.recvfrom(4096)
        out = dns_answer(data)
        out["from"] = "%s:%d" % src
        out["accepted"] = src == (host, port)
    elif mode == "dns-tcp":
        s = socket.create_connection((host, port), timeout=2)
        q = dns_query(sys.argv[4])
        s.sendall(struct.pack(">H", len(q)) + q)
        f = s.makefile("rb")
        n = struct.unpack(">H", f.read(2))[0]
        out = dns_answer(f.read(n))
    else:
        raise SystemExit("unknown mode " + mode)
except OSError as e:
    out["error"] = errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
print(json.dumps(out))
