//! Where originals and renditions live: `object_store` over the local filesystem (`file://`) or
//! S3 (`s3://bucket`, endpoint and credentials from the `AWS_*` variables). Every object of a
//! media item sits under `{media_id}/`, so deleting an item is deleting a prefix.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{
    ObjectStore, PutPayload, WriteMultipart,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    local::LocalFileSystem,
    path::Path,
    prefix::PrefixStore,
    signer::Signer,
};
use uuid::Uuid;

pub use object_store::Error as StorageError;

/// How long a redirect to a rendition stays valid.
pub const SIGNED_URL_TTL: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct MediaStorage {
    store: Arc<dyn ObjectStore>,
    /// S3 only: presigned GETs, so rendition bytes never pass through the API.
    signer: Option<Arc<dyn Signer>>,
    url: String,
}

impl fmt::Debug for MediaStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL names a path or bucket, never a credential (those stay in AWS_*).
        f.debug_struct("MediaStorage")
            .field("url", &self.url)
            .finish()
    }
}

impl MediaStorage {
    /// Opens `file:///abs/path` or `s3://bucket`; `s3_options` (named as
    /// the `AWS_*` variables, lower-case: `aws_endpoint`, …) override the environment, which is
    /// how tests point at a local S3.
    pub fn open(
        url: &str,
        s3_options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StorageError> {
        if let Some(root) = url.strip_prefix("file://") {
            // Under a prefix of the whole filesystem rather than `new_with_prefix`, which wants
            // the directory to exist: starting a process creates nothing; the first write does.
            let root = Path::from_absolute_path(root)?;
            return Ok(MediaStorage {
                store: Arc::new(PrefixStore::new(LocalFileSystem::new(), root)),
                signer: None,
                url: url.to_owned(),
            });
        }
        if url.starts_with("s3://") {
            let mut builder = AmazonS3Builder::from_env().with_url(url);
            for (key, value) in s3_options {
                builder = builder.with_config(key.parse::<AmazonS3ConfigKey>()?, value);
            }
            let s3 = Arc::new(builder.build()?);
            return Ok(MediaStorage {
                store: s3.clone(),
                signer: Some(s3),
                url: url.to_owned(),
            });
        }
        Err(StorageError::Generic {
            store: "MediaStorage",
            source: format!("{url:?} is neither file:///path nor s3://bucket").into(),
        })
    }

    pub fn original_key(media_id: Uuid) -> Path {
        Path::from(format!("{media_id}/original"))
    }

    pub fn rendition_key(media_id: Uuid, name: &str) -> Path {
        Path::from(format!("{media_id}/{name}"))
    }

    /// An upload in parts: S3 multipart, or a staging file renamed into place on the local
    /// filesystem. Nothing is visible under `key` until [`Upload::finish`].
    pub async fn start_upload(&self, key: &Path) -> Result<Upload, StorageError> {
        Ok(Upload(WriteMultipart::new(
            self.store.put_multipart(key).await?,
        )))
    }

    pub async fn put(&self, key: &Path, bytes: Bytes) -> Result<(), StorageError> {
        self.store.put(key, PutPayload::from(bytes)).await?;
        Ok(())
    }

    pub async fn get(&self, key: &Path) -> Result<Bytes, StorageError> {
        self.store.get(key).await?.bytes().await
    }

    /// The object as a stream of chunks (rendition downloads, ffmpeg's input file).
    pub async fn get_stream(
        &self,
        key: &Path,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, StorageError>>, StorageError>
    {
        Ok(self.store.get(key).await?.into_stream())
    }

    /// Copies the object into a local file, chunk by chunk.
    pub async fn download_to(
        &self,
        key: &Path,
        file: &std::path::Path,
    ) -> Result<(), DownloadError> {
        use tokio::io::AsyncWriteExt;
        let mut out = tokio::fs::File::create(file).await?;
        let mut chunks = self.get_stream(key).await?;
        while let Some(chunk) = chunks.next().await {
            out.write_all(&chunk?).await?;
        }
        out.flush().await?;
        Ok(())
    }

    /// Uploads a local file in parts (videos are too large to hold whole). Returns its size.
    pub async fn upload_file(
        &self,
        key: &Path,
        file: &std::path::Path,
    ) -> Result<u64, DownloadError> {
        use tokio::io::AsyncReadExt;
        let mut input = tokio::fs::File::open(file).await?;
        let mut upload = self.start_upload(key).await?;
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let read = match input.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = upload.abort().await;
                    return Err(e.into());
                }
            };
            total += read as u64;
            if let Err(e) = upload.write(&buffer[..read]).await {
                let _ = upload.abort().await;
                return Err(e.into());
            }
        }
        upload.finish().await?;
        Ok(total)
    }

    /// A presigned GET for S3; `None` for local storage, whose bytes the API streams itself.
    pub async fn signed_url(&self, key: &Path) -> Result<Option<String>, StorageError> {
        match &self.signer {
            Some(signer) => Ok(Some(
                signer
                    .signed_url(reqwest::Method::GET, key, SIGNED_URL_TTL)
                    .await?
                    .to_string(),
            )),
            None => Ok(None),
        }
    }

    /// Deletes every object of one media item. Deleting what is already gone is fine.
    pub async fn delete_all(&self, media_id: Uuid) -> Result<(), StorageError> {
        let prefix = Path::from(media_id.to_string());
        let keys: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        for key in keys {
            match self.store.delete(&key).await {
                Ok(()) | Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An object being written in parts.
pub struct Upload(WriteMultipart);

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        // Waits while too many parts are in flight, so a fast client cannot fill memory.
        self.0.wait_for_capacity(4).await?;
        self.0.write(chunk);
        Ok(())
    }

    pub async fn finish(self) -> Result<(), StorageError> {
        self.0.finish().await?;
        Ok(())
    }

    /// Drops every part written; nothing is left under the key.
    pub async fn abort(self) -> Result<(), StorageError> {
        self.0.abort().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("scratch file: {0}")]
    Io(#[from] std::io::Error),
}
