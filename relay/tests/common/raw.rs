//! A session driven by hand (QUIC stream + Noise), for tests that build their own
//! transmissions and look at every frame the relay sends.

use std::time::Duration;

use sotto_protocol::{FRAME_LEN, Frame, FrameBuilder, Initiator, Response, Session, Transmission};

use super::{TestRelay, endpoint};

/// Bound on waiting for one record: a missing frame fails the test instead of hanging it.
/// Not a performance threshold.
const RECORD_BOUND: Duration = Duration::from_secs(20);

/// A session driven by hand, over QUIC.
pub struct RawSession {
    pub session: Session,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    conn: quinn::Connection,
    _ep: quinn::Endpoint,
}

impl RawSession {
    pub async fn open(relay: &TestRelay) -> RawSession {
        let ep = endpoint();
        let conn = ep
            .connect(relay.running().local_addr, "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let (init, m1) = Initiator::start(&relay.address().key, &mut rand::rngs::OsRng).unwrap();
        send.write_all(&m1).await.unwrap();
        let mut m2 = vec![0u8; FRAME_LEN];
        recv.read_exact(&mut m2).await.unwrap();
        RawSession {
            session: init.finish(&m2).unwrap(),
            send,
            recv,
            conn,
            _ep: ep,
        }
    }

    pub fn hash(&self) -> [u8; 32] {
        self.session.handshake_hash
    }

    /// Sends `ts` in one frame.
    pub async fn send(&mut self, ts: &[Transmission]) {
        let mut fb = FrameBuilder::new();
        for t in ts {
            assert!(fb.push(t));
        }
        let rec = self.session.send.encrypt_frame(&fb.finish()).unwrap();
        self.send.write_all(&rec).await.unwrap();
    }

    /// Encrypts `plaintext` (any bytes, e.g. a malformed frame of the right length) as the
    /// next record and sends it.
    pub async fn send_plaintext(&mut self, plaintext: &[u8]) {
        let rec = self.session.send.encrypt_frame(plaintext).unwrap();
        self.send.write_all(&rec).await.unwrap();
    }

    /// Sends raw bytes on the stream, outside any record.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// Ends the client's direction of the stream (FIN) after what was written.
    pub fn finish(&mut self) {
        self.send.finish().unwrap();
    }

    /// The next record, decrypted and decoded; `None` when the relay ended the stream or
    /// the connection instead (bounded).
    pub async fn try_recv_frame(&mut self) -> Option<Vec<Transmission>> {
        let mut rec = vec![0u8; FRAME_LEN];
        match tokio::time::timeout(RECORD_BOUND, self.recv.read_exact(&mut rec))
            .await
            .expect("neither a frame nor the end of the stream")
        {
            Ok(()) => {
                let plain = self.session.recv.decrypt_frame(&rec).unwrap();
                Some(Frame::decode(&plain).unwrap())
            }
            Err(_) => None,
        }
    }

    /// Waits (bounded) until the relay closes the connection and returns the QUIC
    /// application error code it closed with (`None` for any other way of ending).
    pub async fn close_code(&self) -> Option<u64> {
        let reason = tokio::time::timeout(RECORD_BOUND, self.conn.closed())
            .await
            .expect("the relay did not close the connection");
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }

    /// The next frame the relay sends, as its transmissions.
    pub async fn recv_frame(&mut self) -> Vec<Transmission> {
        let mut rec = vec![0u8; FRAME_LEN];
        tokio::time::timeout(RECORD_BOUND, self.recv.read_exact(&mut rec))
            .await
            .expect("no frame")
            .unwrap();
        let plain = self.session.recv.decrypt_frame(&rec).unwrap();
        Frame::decode(&plain).unwrap()
    }

    /// Sends `ts` in one frame and returns every transmission received, in order, until
    /// `done` holds for what was received so far.
    pub async fn exchange(
        &mut self,
        ts: &[Transmission],
        done: impl Fn(&[Transmission]) -> bool,
    ) -> Vec<Transmission> {
        self.send(ts).await;
        let mut got = Vec::new();
        while !done(&got) {
            got.extend(self.recv_frame().await);
        }
        got
    }

    /// Sends one transmission and returns the answer to its corr id.
    pub async fn request(&mut self, t: Transmission) -> Response {
        let corr = t.corr_id;
        let got = self
            .exchange(&[t], |got| got.iter().any(|t| t.corr_id == corr))
            .await;
        let answer = got.into_iter().find(|t| t.corr_id == corr).unwrap();
        answer.decode_response().unwrap()
    }
}
