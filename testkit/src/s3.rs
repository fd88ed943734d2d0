//! A local S3: `moto_server` (PyPI `moto[server]`, installed by `scripts/services`) on a free
//! port per test, with one bucket. moto speaks the S3 REST protocol, presigned URLs included, so
//! the media family's `s3://` path runs against it unchanged.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use groundcrew_jobs::media::{MediaSettings, MediaStorage};

use crate::free_port;

pub const BUCKET: &str = "groundcrew-media";
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

pub struct MotoS3 {
    pub port: u16,
    child: Child,
}

impl MotoS3 {
    /// Starts moto and creates [`BUCKET`].
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (scripts/services installs moto[server])");
        let moto = MotoS3 { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        // moto does not check signatures, so the bucket is created with a bare request.
        let status = moto.raw_request(&format!("PUT /{BUCKET} HTTP/1.1"));
        assert!(status.contains(" 200 "), "create bucket: {status}");
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `AWS_*` settings that point the S3 client at this server.
    pub fn aws_options(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".into(), self.endpoint()),
            ("aws_access_key_id".into(), ACCESS_KEY_ID.into()),
            ("aws_secret_access_key".into(), SECRET_ACCESS_KEY.into()),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_allow_http".into(), "true".into()),
        ]
    }

    /// Media settings storing in this server's bucket, with scratch space under `data_dir`.
    pub fn media_settings(&self, data_dir: &std::path::Path) -> MediaSettings {
        let mut settings = MediaSettings::local(data_dir).expect("local media settings");
        settings.storage =
            MediaStorage::open(&format!("s3://{BUCKET}"), self.aws_options()).expect("S3 storage");
        settings
    }

    /// Objects in the bucket (keys), by a bare ListObjectsV2.
    pub fn keys(&self) -> Vec<String> {
        let body = self.raw_request(&format!("GET /{BUCKET}?list-type=2 HTTP/1.1"));
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    fn raw_request(&self, request_line: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("moto reachable");
        write!(
            stream,
            "{request_line}\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    }
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
