//! The built-in responders that stand in for container images in local mode: on every
//! declared TCP port an HTTP/1.1 server answering 200 to HEAD and GET (with the ordinary
//! headers a web app sends), on every UDP port an echo. Started inside the pod's network
//! namespace by the local runtime.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::{SystemTime, UNIX_EPOCH},
};

/// An RFC 7231 date (the `Date` header), computed without a calendar crate.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    let mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        [(month - 1) as usize];
    format!("{weekday}, {day:02} {mon} {year} {:02}:{:02}:{:02} GMT", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn serve_http(stream: TcpStream, pod: String) {
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if r.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" && line != "\n" {
            line.clear();
        }
        let method = request.split_whitespace().next().unwrap_or("");
        let body =
            format!("<!DOCTYPE html><html><body><h1>{pod}</h1><p>netpol local responder</p></body></html>\n");
        let (status, send_body) = match method {
            "GET" => ("200 OK", true),
            "HEAD" => ("200 OK", false),
            _ => ("405 Method Not Allowed", false),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nX-Powered-By: netpol local responder\r\nContent-Type: text/html; charset=UTF-8\r\n\
             Content-Length: {}\r\nDate: {}\r\nConnection: keep-alive\r\n\r\n",
            body.len(),
            http_date(SystemTime::now())
        );
        if w.write_all(head.as_bytes()).is_err() || (send_body && w.write_all(body.as_bytes()).is_err()) {
            return;
        }
    }
}

/// Serves until killed.
pub fn run(pod: &str, tcp: &[u16], udp: &[u16]) -> anyhow::Result<()> {
    let mut threads = Vec::new();
    for &port in tcp {
        let l = TcpListener::bind(("0.0.0.0", port))?;
        let pod = pod.to_string();
        threads.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let pod = pod.clone();
                std::thread::spawn(move || serve_http(s, pod));
            }
        }));
    }
    for &port in udp {
        let s = UdpSocket::bind(("0.0.0.0", port))?;
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 65_536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_rfc7231() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(499_162_500)), "Sat, 26 Oct 1985 08:15:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1_637_671_844)),
            "Tue, 23 Nov 2021 12:50:44 GMT"
        );
    }
}
