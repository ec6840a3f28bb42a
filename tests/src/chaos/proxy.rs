//! A TCP proxy between one tier and nats-server, so that one tier's NATS link can be cut and
//! restored while the tier, the server and the other tiers keep running, as a network partition
//! does.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A cuttable link to nats-server; stops (closing every connection) when dropped.
pub struct LinkProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free local port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let accept = tokio::spawn(accept(listener, upstream, cut.clone()));
        Ok(LinkProxy { addr, cut, accept })
    }

    /// The URL the tier connects to instead of the server's.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Closes every connection and closes new ones at once, until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards new connections again; the tier's client reconnects on its own.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // The connections end when they see the cut (or the sender gone).
        self.cut.send_replace(true);
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, cut: watch::Sender<bool>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *cut.borrow() {
            // Refused: the client sees the connection close and tries again later.
            drop(client);
            continue;
        }
        tokio::spawn(forward(client, upstream, cut.subscribe()));
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    // nats-server may be down itself: then the client's connection just closes.
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    // Small protocol messages: do not let Nagle's algorithm add latency to the measurements.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server standing in for nats-server.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(socket: &mut TcpStream) -> io::Result<()> {
        socket.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(2), socket.read_exact(&mut answer)).await??;
        assert_eq!(&answer, b"PING\r\n");
        Ok(())
    }

    /// Reads until the proxy closes the connection; Ok(true) when it did.
    async fn closed(socket: &mut TcpStream) -> bool {
        let mut buffer = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buffer)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_cut_closes_open_connections_and_refuses_new_ones_until_restored() {
        let proxy = LinkProxy::start(echo().await).await.unwrap();
        let addr = proxy.url().trim_start_matches("nats://").to_owned();
        let mut before = TcpStream::connect(&addr).await.unwrap();
        round_trip(&mut before).await.unwrap();

        proxy.cut();
        assert!(closed(&mut before).await, "the open connection is closed");
        let mut during = TcpStream::connect(&addr).await.unwrap();
        assert!(
            closed(&mut during).await,
            "a new connection is closed at once"
        );

        proxy.restore();
        let mut after = TcpStream::connect(&addr).await.unwrap();
        round_trip(&mut after).await.unwrap();
    }
}
