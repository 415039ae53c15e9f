use super::*;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn scan(bytes: &[u8], buf: &mut BytesMut, pos: &mut ScanPos, txn: &mut Txn) -> Result<(), protocol::Error> {
    buf.extend_from_slice(bytes);
    scan_client(&mut Half { buf, pos }, txn, 1 << 20)
}

#[test]
fn simple_query_is_one_request() {
    let (mut buf, mut pos, mut txn) = (BytesMut::new(), ScanPos::default(), Txn::new());
    scan(&msg(b'Q', b"select 1\0"), &mut buf, &mut pos, &mut txn).unwrap();
    assert_eq!(txn.pending, 1);
    assert!(txn.request_ready(&pos));
    assert_eq!(pos.fwd, buf.len());
}

#[test]
fn extended_batch_counts_syncs_and_waits_for_them() {
    let (mut buf, mut pos, mut txn) = (BytesMut::new(), ScanPos::default(), Txn::new());
    let mut bytes = msg(b'P', b"\0select 1\0\0\0");
    bytes.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    bytes.extend(msg(b'E', b"\0\0\0\0\0"));
    scan(&bytes, &mut buf, &mut pos, &mut txn).unwrap();
    assert!(txn.unsynced && !txn.request_ready(&pos));
    scan(&msg(b'S', b""), &mut buf, &mut pos, &mut txn).unwrap();
    scan(&msg(b'S', b""), &mut buf, &mut pos, &mut txn).unwrap();
    assert_eq!(txn.pending, 2);
    assert!(!txn.unsynced && txn.request_ready(&pos));
}

#[test]
fn partial_messages_wait_for_header_and_stream_bodies() {
    let (mut buf, mut pos, mut txn) = (BytesMut::new(), ScanPos::default(), Txn::new());
    let big = msg(b'd', &vec![7u8; 1000]);
    scan(&big[..3], &mut buf, &mut pos, &mut txn).unwrap();
    assert_eq!(pos.fwd, 0);
    scan(&big[3..100], &mut buf, &mut pos, &mut txn).unwrap();
    assert_eq!((pos.fwd, pos.skip), (100, big.len() - 100));
    scan(&big[100..], &mut buf, &mut pos, &mut txn).unwrap();
    assert_eq!((pos.fwd, pos.skip), (big.len(), 0));
}

#[test]
fn terminate_is_swallowed_and_ends_scanning() {
    let (mut buf, mut pos, mut txn) = (BytesMut::new(), ScanPos::default(), Txn::new());
    let mut bytes = msg(b'Q', b"select 1\0");
    let q_len = bytes.len();
    bytes.extend(msg(b'X', b""));
    bytes.extend(msg(b'Q', b"select 2\0"));
    scan(&bytes, &mut buf, &mut pos, &mut txn).unwrap();
    assert!(txn.terminated);
    assert_eq!((buf.len(), pos.fwd, txn.pending), (q_len, q_len, 1));
}

#[test]
fn rejects_unknown_tags_and_bad_lengths() {
    let (mut buf, mut pos, mut txn) = (BytesMut::new(), ScanPos::default(), Txn::new());
    assert_eq!(scan(&msg(b'?', b""), &mut buf, &mut pos, &mut txn), Err(protocol::Error::UnexpectedTag(b'?')));
    let (mut buf, mut pos) = (BytesMut::new(), ScanPos::default());
    assert!(scan(b"Q\0\0\0\x02", &mut buf, &mut pos, &mut txn).is_err());
    let (mut buf, mut pos) = (BytesMut::new(), ScanPos::default());
    assert!(matches!(scan(b"Q\x7f\xff\xff\xff", &mut buf, &mut pos, &mut txn), Err(protocol::Error::TooLarge { .. })));
}

#[test]
fn server_scan_tracks_ready_for_query_and_parameters() {
    let (mut buf, mut pos) = (BytesMut::new(), ScanPos::default());
    let mut txn = Txn { pending: 2, ..Txn::new() };
    let mut server_params = vec![("TimeZone".to_string(), "UTC".to_string())];
    let mut client = ClientParams::default();
    let mut bytes = msg(b'C', b"SELECT 1\0");
    bytes.extend(msg(b'S', b"TimeZone\0Europe/Paris\0"));
    bytes.extend(msg(b'Z', b"T"));
    let z = msg(b'Z', b"I");
    bytes.extend(&z[..3]);
    buf.extend_from_slice(&bytes);
    let mut synced = None;
    let mut sink = ParamSink { conn: &mut server_params, synced: &mut synced, client: &mut client };
    scan_server(&mut Half { buf: &mut buf, pos: &mut pos }, &mut txn, false, &mut sink).unwrap();
    assert_eq!((txn.pending, txn.status), (1, b'T'));
    assert_eq!(pos.fwd, bytes.len() - 3);
    buf.extend_from_slice(&z[3..]);
    scan_server(&mut Half { buf: &mut buf, pos: &mut pos }, &mut txn, false, &mut sink).unwrap();
    assert!(txn.server_idle());
    assert_eq!(server_params[0].1, "Europe/Paris");
    assert_eq!(client.get("TimeZone"), Some("Europe/Paris"));
}

#[test]
fn statement_mode_flags_transaction_blocks() {
    let (mut buf, mut pos) = (BytesMut::new(), ScanPos::default());
    let mut txn = Txn { pending: 1, ..Txn::new() };
    let (mut sp, mut cp) = (Vec::new(), ClientParams::default());
    buf.extend_from_slice(&msg(b'Z', b"T"));
    let mut synced = None;
    let mut sink = ParamSink { conn: &mut sp, synced: &mut synced, client: &mut cp };
    scan_server(&mut Half { buf: &mut buf, pos: &mut pos }, &mut txn, true, &mut sink).unwrap();
    assert!(txn.opened_transaction);
}

#[test]
fn extended_copy_in_does_not_count_ignored_syncs() {
    let (mut buf, mut pos, mut txn) = (BytesMut::new(), ScanPos::default(), Txn::new());
    let mut bytes = msg(b'P', b"\0copy t from stdin\0\0\0");
    bytes.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    bytes.extend(msg(b'E', b"\0\0\0\0\0"));
    bytes.extend(msg(b'S', b""));
    scan(&bytes, &mut buf, &mut pos, &mut txn).unwrap();
    assert_eq!(txn.pending, 1);
    let mut copy = msg(b'd', b"1\n");
    copy.extend(msg(b'c', b""));
    copy.extend(msg(b'S', b""));
    scan(&copy, &mut buf, &mut pos, &mut txn).unwrap();
    // The server answers one C + one Z: exactly one ReadyForQuery is owed.
    assert_eq!(txn.pending, 1);
}

#[test]
fn simple_copy_in_keeps_its_ready_for_query() {
    let (mut buf, mut pos, mut txn) = (BytesMut::new(), ScanPos::default(), Txn::new());
    scan(&msg(b'Q', b"copy t from stdin\0"), &mut buf, &mut pos, &mut txn).unwrap();
    let mut copy = msg(b'd', b"1\n");
    copy.extend(msg(b'c', b""));
    scan(&copy, &mut buf, &mut pos, &mut txn).unwrap();
    assert_eq!(txn.pending, 1);
}

#[test]
fn lone_flush_does_not_pin_the_server() {
    let (mut buf, mut pos, mut txn) = (BytesMut::new(), ScanPos::default(), Txn::new());
    scan(&msg(b'H', b""), &mut buf, &mut pos, &mut txn).unwrap();
    assert!(!txn.unsynced && !txn.flushed && !txn.request_ready(&pos));
    scan(&msg(b'Q', b"select 1\0"), &mut buf, &mut pos, &mut txn).unwrap();
    assert!(txn.request_ready(&pos));
    // After the query's `Z I` the server is idle again.
    txn.pending = 0;
    assert!(txn.server_idle());
}
