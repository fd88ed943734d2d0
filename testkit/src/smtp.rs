//! A real SMTP server: Python's `aiosmtpd` as a child process, writing each message it
//! accepts, byte for byte, to a directory of its own (`NNNNNN.eml`, envelope recipients in
//! `NNNNNN.rcpt`). scripts/services installs python3-aiosmtpd.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use crate::tls::TestCa;

const SERVER: &str = r#"
import itertools, os, ssl, sys
from aiosmtpd.controller import Controller

out, port = sys.argv[1], int(sys.argv[2])
# A certificate and key: SMTP over TLS from the first byte (`smtps://`), as on port 465.
context = None
if len(sys.argv) > 4:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
numbers = itertools.count()

class Recorder:
    async def handle_DATA(self, server, session, envelope):
        base = os.path.join(out, "%06d" % next(numbers))
        with open(base + ".rcpt", "w") as f:
            f.write("\n".join(envelope.rcpt_tos))
        with open(base + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(base + ".tmp", base + ".eml")
        return "250 OK"

controller = Controller(Recorder(), hostname="127.0.0.1", port=port, ssl_context=context)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"#;

/// A message as the server received it.
#[derive(Clone, Debug)]
pub struct Mail {
    pub rcpt_to: Vec<String>,
    pub raw: Vec<u8>,
}

impl Mail {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The value of a top-level header (unfolded), matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut()
                && line.starts_with([' ', '\t'])
            {
                v.push_str(line);
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }
}

pub struct SmtpServer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
    tls: bool,
}

impl SmtpServer {
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// The server speaking TLS from the first byte with `ca`'s certificate for 127.0.0.1.
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::spawn(Some(ca))
    }

    fn spawn(ca: Option<&TestCa>) -> Self {
        let port = crate::free_port();
        let dir = std::env::temp_dir().join(format!("gc-smtp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("mail directory");
        // Debian's python3-aiosmtpd lives in the system interpreter, which a pyenv or venv
        // `python3` on PATH may not be.
        let python = ["/usr/bin/python3", "python3"]
            .into_iter()
            .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
            .expect("a python3");
        let mut child = Command::new(python)
            .args(["-c", SERVER])
            .arg(&dir)
            .arg(port.to_string())
            .args(
                ca.map(|ca| [ca.server_cert_file(), ca.server_key_file()])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd (scripts/services installs it)");
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut ready)
            .expect("aiosmtpd output");
        assert_eq!(ready.trim(), "ready", "aiosmtpd did not start");
        SmtpServer {
            port,
            dir,
            child,
            tls: ca.is_some(),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "smtps" } else { "smtp" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Mail> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("mail directory")
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|eml| Mail {
                rcpt_to: std::fs::read_to_string(eml.with_extension("rcpt"))
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect(),
                raw: std::fs::read(&eml).expect("message file"),
            })
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
