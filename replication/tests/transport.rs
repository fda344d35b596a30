//! The RPC transport over real loopback sockets: frames arrive whole and in order, a peer that
//! restarts is redialed after backoff, malformed input closes only its own connection, and
//! neither a hung peer (it accepts, reads nothing) nor an unreachable one (its dial never
//! completes) holds a flush up, or another peer's frames; a peer's writer holds a bounded
//! number of bytes.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::run;
use futures::AsyncWriteExt;
use glommio::net::TcpStream;
use sluice_replication::rpc::{encode_frame, Frame, GroupKey, GroupMessage, PeerCall};
use sluice_replication::transport::{Listener, Transport};
use sluice_replication::{Message, MessageType};

const MAX_FRAME: usize = 1 << 20;

fn heartbeat(sequence: u64) -> GroupMessage {
    GroupMessage {
        group: GroupKey {
            topic_id: 0xfeed,
            partition: (sequence % 7) as i32,
        },
        message: Message {
            msg_type: MessageType::MsgHeartbeat,
            from: 1,
            to: 2,
            commit: sequence,
            ..Message::default()
        },
        quiet: sequence % 2 == 1,
    }
}

/// [`heartbeat`] addressed to node `to`.
fn heartbeat_to(to: u64, sequence: u64) -> GroupMessage {
    let mut message = heartbeat(sequence);
    message.message.to = to;
    message
}

type Inbox = Rc<RefCell<Vec<Frame>>>;

fn listen(address: SocketAddr, inbox: &Inbox) -> Listener {
    let inbox = inbox.clone();
    Listener::bind(address, vec![1], MAX_FRAME, move |frame| {
        inbox.borrow_mut().push(frame)
    })
    .expect("binds")
}

fn received(inbox: &Inbox) -> Vec<u64> {
    inbox
        .borrow()
        .iter()
        .flat_map(|f| f.messages.iter().map(|m| m.message.commit))
        .collect()
}

async fn wait_for(inbox: &Inbox, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while received(inbox).len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} arrived",
            received(inbox).len()
        );
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn a_flush_sends_one_frame_per_peer_and_messages_arrive_in_order() {
    run(|| async {
        let inbox: Inbox = Rc::default();
        let listener = listen("127.0.0.1:0".parse().unwrap(), &inbox);
        let transport = Transport::new(1, &HashMap::from([(2, listener.address())]));
        let mut sent = 0u64;
        for _ in 0..50 {
            for _ in 0..100 {
                sent += 1;
                assert!(transport.send(2, heartbeat(sent)));
            }
            let report = transport.flush().await;
            assert_eq!((report.frames_sent, report.messages_sent), (1, 100));
            assert!(report.unreachable.is_empty());
        }
        assert!(!transport.send(9, heartbeat(0)), "unknown peer refused");
        wait_for(&inbox, 5_000).await;
        assert_eq!(received(&inbox), (1..=5_000).collect::<Vec<_>>());
        assert_eq!(inbox.borrow().len(), 50, "one frame per flush");
        assert!(inbox.borrow().iter().all(|f| f.from_node == 1));
    });
}

fn call(id: u64, answer: bool) -> PeerCall {
    PeerCall {
        id,
        answer,
        api_key: 27,
        api_version: 1,
        body: vec![id as u8; id as usize].into(),
    }
}

#[test]
fn calls_travel_in_frames_of_their_own_or_beside_messages_in_order() {
    run(|| async {
        let inbox: Inbox = Rc::default();
        let listener = listen("127.0.0.1:0".parse().unwrap(), &inbox);
        let transport = Transport::new(1, &HashMap::from([(2, listener.address())]));
        // Calls alone make a frame; beside messages they share it.
        assert!(transport.send_call(2, call(1, false)));
        assert!(transport.send_call(2, call(2, true)));
        assert_eq!(transport.flush().await.frames_sent, 1);
        assert!(transport.send(2, heartbeat(1)));
        assert!(transport.send_call(2, call(3, false)));
        assert_eq!(transport.flush().await.frames_sent, 1);
        assert!(
            !transport.send_call(9, call(4, false)),
            "unknown peer refused"
        );
        wait_for(&inbox, 1).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while inbox.borrow().len() < 2 {
            assert!(Instant::now() < deadline, "the second frame never came");
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        let frames = inbox.borrow();
        assert_eq!(frames[0].calls, vec![call(1, false), call(2, true)]);
        assert!(frames[0].messages.is_empty());
        assert_eq!(frames[1].calls, vec![call(3, false)]);
        assert_eq!(frames[1].messages.len(), 1);
    });
}

#[test]
fn a_peer_that_restarts_is_redialed_after_backoff() {
    run(|| async {
        let inbox: Inbox = Rc::default();
        let listener = listen("127.0.0.1:0".parse().unwrap(), &inbox);
        let address = listener.address();
        let transport = Transport::new(1, &HashMap::from([(2, address)]));
        transport.send(2, heartbeat(1));
        assert_eq!(transport.flush().await.messages_sent, 1);
        wait_for(&inbox, 1).await;

        // The peer goes away: its socket and connections close.
        drop(listener);
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let mut unreachable_reported = false;
        for sequence in 2..20 {
            transport.send(2, heartbeat(sequence));
            let report = transport.flush().await;
            unreachable_reported |= report.unreachable == vec![2];
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        assert!(unreachable_reported, "a dead peer is reported unreachable");

        // Back on the same address: within the backoff, messages flow again.
        let listener = listen(address, &inbox);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sequence = 100;
        loop {
            sequence += 1;
            transport.send(2, heartbeat(sequence));
            if transport.flush().await.messages_sent == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "peer not redialed");
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        while !received(&inbox).contains(&sequence) {
            assert!(
                Instant::now() < deadline,
                "message after the redial not received"
            );
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        drop(listener);
    });
}

#[test]
fn malformed_frames_close_only_their_own_connection() {
    run(|| async {
        let inbox: Inbox = Rc::default();
        let listener = listen("127.0.0.1:0".parse().unwrap(), &inbox);
        let transport = Transport::new(1, &HashMap::from([(2, listener.address())]));

        let mut frame = Vec::new();
        encode_frame(1, &[heartbeat(7)], None, &[], &mut frame);
        let mut bad_checksum = frame.clone();
        *bad_checksum.last_mut().unwrap() ^= 0xff;
        let mut too_long = frame.clone();
        too_long[..4].copy_from_slice(&(u32::MAX).to_le_bytes());
        let mut stranger = Vec::new();
        encode_frame(66, &[heartbeat(8)], None, &[], &mut stranger);
        let mut stranger_calling = Vec::new();
        encode_frame(66, &[], None, &[call(5, false)], &mut stranger_calling);
        for bad in [
            bad_checksum,
            too_long,
            stranger,
            stranger_calling,
            vec![1, 2, 3],
        ] {
            let mut raw = TcpStream::connect(listener.address()).await.unwrap();
            raw.write_all(&bad).await.unwrap();
            raw.write_all(&frame).await.unwrap(); // a good frame after the bad one is not read
            raw.flush().await.unwrap();
            // The listener closes the connection: reading gives end of stream (or a reset).
            let mut buf = [0u8; 1];
            let closed = glommio::timer::timeout(Duration::from_secs(5), async {
                Ok(futures::AsyncReadExt::read(&mut raw, &mut buf).await)
            })
            .await
            .expect("closed within 5 s");
            assert!(matches!(closed, Ok(0) | Err(_)), "connection left open");
        }
        // The well-behaved sender was never disturbed; nothing from the bad connections
        // (a truncated three-byte header is not a frame either) was delivered.
        for sequence in 1..=10 {
            transport.send(2, heartbeat(sequence));
            assert_eq!(transport.flush().await.messages_sent, 1);
        }
        wait_for(&inbox, 10).await;
        assert_eq!(received(&inbox), (1..=10).collect::<Vec<_>>());
    });
}

/// A node that is no peer yet may only ask to join: its join frame is delivered (the owner
/// decides), anything else from it closes the connection; once allowed, its frames arrive,
/// and a transport that learned a new peer sends to it.
#[test]
fn a_stranger_may_only_ask_to_join_until_it_is_allowed() {
    run(|| async {
        let inbox: Inbox = Rc::default();
        let listener = listen("127.0.0.1:0".parse().unwrap(), &inbox);
        let stranger = Transport::new(9, &HashMap::from([(2, listener.address())]));
        assert!(stranger.send_join(2, bytes::Bytes::from_static(b"{\"node_id\":8}")));
        assert_eq!(stranger.flush().await.unreachable, Vec::<u64>::new());
        let deadline = Instant::now() + Duration::from_secs(5);
        while inbox.borrow().is_empty() {
            assert!(Instant::now() < deadline, "the join never arrived");
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        {
            let frames = inbox.borrow();
            assert_eq!(frames[0].from_node, 9);
            assert_eq!(frames[0].join.as_deref(), Some(&b"{\"node_id\":8}"[..]));
            assert!(frames[0].messages.is_empty());
        }
        // Raft messages from the stranger close its connection: nothing is delivered.
        assert!(stranger.send(2, heartbeat(1)));
        stranger.flush().await;
        glommio::timer::sleep(Duration::from_millis(100)).await;
        assert_eq!(received(&inbox), Vec::<u64>::new());

        // Allowed, its messages arrive (on a new connection: the old one was closed).
        listener.allow_sender(9);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sequence = 1;
        while received(&inbox).is_empty() {
            assert!(
                Instant::now() < deadline,
                "an allowed sender's frames never arrived"
            );
            sequence += 1;
            stranger.send(2, heartbeat(sequence));
            stranger.flush().await;
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }

        // A transport learns a peer: it sends there from then on.
        let second: Inbox = Rc::default();
        let other = listen("127.0.0.1:0".parse().unwrap(), &second);
        let mut transport = Transport::new(1, &HashMap::new());
        assert!(!transport.send(3, heartbeat(5)), "no such peer yet");
        assert!(transport.add_peer(3, other.address()));
        assert!(!transport.add_peer(3, other.address()), "known already");
        assert!(transport.send(3, heartbeat(5)));
        assert_eq!(transport.flush().await.messages_sent, 1);
        wait_for(&second, 1).await;
    });
}

/// A peer that accepts connections but never reads (a stopped process: the kernel still
/// accepts and buffers). A flush only hands frames to the peer's writer, so none waits on it
/// (a flush that waited once the socket buffers filled stalled every group of the sending node:
/// found with a SIGSTOPped node of a 1,000-partition cluster, whose peers then answered
/// nothing, not even Metadata); the hung peer is reported unreachable (its write timed out, or
/// its writer holds the most it may), and a healthy peer of the same transport gets every
/// frame meanwhile.
#[test]
fn a_hung_peer_never_holds_a_flush_up() {
    run(|| async {
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = hung.local_addr().unwrap();
        // Accepted and kept open, never read.
        let (accepted_tx, accepted_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (connection, _) = hung.accept().unwrap();
            accepted_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(20));
            drop(connection);
        });
        let inbox: Inbox = Rc::default();
        let healthy = listen("127.0.0.1:0".parse().unwrap(), &inbox);
        let transport = Transport::new(1, &HashMap::from([(2, address), (3, healthy.address())]));
        let big = |sequence: u64| {
            let mut message = heartbeat(sequence);
            message.message.context = vec![7u8; 200 * 1024].into();
            message
        };
        let mut unreachable_after = None;
        let mut to_healthy = 0u64;
        for round in 0..2_000u64 {
            for i in 0..4 {
                transport.send(2, big(round * 4 + i));
            }
            to_healthy += 1;
            transport.send(3, heartbeat_to(3, to_healthy));
            let started = Instant::now();
            let report = transport.flush().await;
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(100),
                "flush {round} waited {took:?} with a hung peer"
            );
            if report.unreachable == [2] {
                unreachable_after = Some(round);
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        accepted_rx
            .try_recv()
            .expect("the peer accepted the connection");
        let round = unreachable_after.expect("the hung peer was reported unreachable");
        assert!(round > 0, "the first frames fit the buffers");
        wait_for(&inbox, to_healthy as usize).await;
        assert_eq!(received(&inbox), (1..=to_healthy).collect::<Vec<_>>());
    });
}

/// A peer whose dial never completes (its machine gone: the SYN goes unanswered; here, a
/// listener whose accept queue is full, which drops it). The dial waits out its timeout in the
/// peer's writer, not in a flush; the peer is then reported unreachable, and a healthy peer
/// gets every frame in the meantime.
#[test]
fn an_unreachable_peer_never_holds_a_flush_up() {
    run(|| async {
        use socket2::{Domain, Socket, Type};
        let full = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        full.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        full.listen(0).unwrap();
        let address = full.local_addr().unwrap().as_socket().unwrap();
        // Fills the accept queue (never accepted): the next SYN is dropped.
        let _filler = std::net::TcpStream::connect(address).unwrap();
        let inbox: Inbox = Rc::default();
        let healthy = listen("127.0.0.1:0".parse().unwrap(), &inbox);
        let transport = Transport::new(1, &HashMap::from([(2, address), (3, healthy.address())]));
        let started = Instant::now();
        let mut sequence = 0u64;
        let mut reported = None;
        while started.elapsed() < Duration::from_secs(10) {
            sequence += 1;
            transport.send(2, heartbeat(sequence));
            transport.send(3, heartbeat_to(3, sequence));
            let flushed = Instant::now();
            let report = transport.flush().await;
            assert!(
                flushed.elapsed() < Duration::from_millis(100),
                "flush {sequence} waited {:?} on a dial",
                flushed.elapsed()
            );
            if report.unreachable == [2] {
                reported = Some(started.elapsed());
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let reported = reported.expect("the unreachable peer was reported");
        assert!(
            reported >= Duration::from_millis(900),
            "reported after {reported:?}: before the dial could time out"
        );
        wait_for(&inbox, sequence as usize).await;
        assert_eq!(received(&inbox), (1..=sequence).collect::<Vec<_>>());
    });
}

/// A peer's writer holds at most `PEER_QUEUE_BYTES_MAX` unwritten: flushes that do not let it
/// run (nothing is written meanwhile) fill it up to the bound, the next frame is dropped and
/// the peer reported unreachable, and what was handed over still arrives, whole and in order,
/// without the dropped frame.
#[test]
fn a_peer_writer_holds_at_most_its_bound_and_drops_beyond_it() {
    run(|| async {
        let inbox: Inbox = Rc::default();
        let listener = listen("127.0.0.1:0".parse().unwrap(), &inbox);
        let transport = Transport::new(1, &HashMap::from([(2, listener.address())]));
        let big = |sequence: u64| {
            let mut message = heartbeat(sequence);
            message.message.context = vec![7u8; 512 * 1024].into();
            message
        };
        // No await between these flushes: the writer has not written a byte.
        let mut handed = 0u64;
        let dropped = loop {
            assert!(handed < 1_000, "the bound never refused a frame");
            transport.send(2, big(handed + 1));
            let report = transport.flush().await;
            if report.unreachable == [2] {
                assert_eq!(report.frames_sent, 0);
                break handed + 1;
            }
            assert_eq!(report.frames_sent, 1);
            handed += 1;
        };
        let bound = sluice_replication::transport::PEER_QUEUE_BYTES_MAX as u64;
        assert!(
            (bound / (520 * 1024)..=bound / (512 * 1024)).contains(&handed),
            "{handed} frames of ~512 KiB handed over under a {bound}-byte bound"
        );
        wait_for(&inbox, handed as usize).await;
        assert_eq!(received(&inbox), (1..=handed).collect::<Vec<_>>());
        // Written, the writer takes frames again; the dropped one never arrives.
        transport.send(2, heartbeat(dropped + 1));
        assert_eq!(transport.flush().await.frames_sent, 1);
        wait_for(&inbox, handed as usize + 1).await;
        let mut expected: Vec<u64> = (1..=handed).collect();
        expected.push(dropped + 1);
        assert_eq!(received(&inbox), expected);
    });
}
