//! Property tests of the request parser: no input makes it panic or claim bytes it does not
//! have, and well-formed commands come out as they went in, however the bytes are chunked.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn limits() -> Limits {
    Limits {
        max_item_size: 4096,
        max_get_line: 1 << 20,
    }
}

/// Legal key bytes: printable ASCII without space, plus high bytes.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![0x21u8..0x7f, 0x80u8..=0xff],
        1..=marker::key::MAX_KEY_LEN,
    )
}

#[derive(Debug, Clone)]
enum Cmdline {
    Set {
        verb: &'static str,
        key: Vec<u8>,
        flags: u32,
        exptime: i32,
        value: Vec<u8>,
        noreply: bool,
    },
    Get {
        verb: &'static str,
        keys: Vec<Vec<u8>>,
    },
    Delete {
        key: Vec<u8>,
        noreply: bool,
    },
    Mg {
        key: Vec<u8>,
        flags: Vec<&'static str>,
        quiet: bool,
    },
    Ms {
        key: Vec<u8>,
        value: Vec<u8>,
        quiet: bool,
    },
}

impl Cmdline {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Cmdline::Set {
                verb,
                key,
                flags,
                exptime,
                value,
                noreply,
            } => {
                out.extend_from_slice(verb.as_bytes());
                out.push(b' ');
                out.extend_from_slice(key);
                out.extend_from_slice(format!(" {flags} {exptime} {}", value.len()).as_bytes());
                if *noreply {
                    out.extend_from_slice(b" noreply");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            Cmdline::Get { verb, keys } => {
                out.extend_from_slice(verb.as_bytes());
                for k in keys {
                    out.push(b' ');
                    out.extend_from_slice(k);
                }
                out.extend_from_slice(b"\r\n");
            }
            Cmdline::Delete { key, noreply } => {
                out.extend_from_slice(b"delete ");
                out.extend_from_slice(key);
                if *noreply {
                    out.extend_from_slice(b" noreply");
                }
                out.extend_from_slice(b"\r\n");
            }
            Cmdline::Mg { key, flags, quiet } => {
                out.extend_from_slice(b"mg ");
                out.extend_from_slice(key);
                for f in flags {
                    out.push(b' ');
                    out.extend_from_slice(f.as_bytes());
                }
                if *quiet {
                    out.extend_from_slice(b" q");
                }
                out.extend_from_slice(b"\r\n");
            }
            Cmdline::Ms { key, value, quiet } => {
                out.extend_from_slice(b"ms ");
                out.extend_from_slice(key);
                out.extend_from_slice(format!(" {} T0", value.len()).as_bytes());
                if *quiet {
                    out.extend_from_slice(b" q");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }
}

fn cmdline() -> impl Strategy<Value = Cmdline> {
    let value = prop::collection::vec(any::<u8>(), 0..600);
    prop_oneof![
        (
            prop::sample::select(vec!["set", "add", "replace", "append", "prepend"]),
            key(),
            any::<u32>(),
            -1000i32..100000,
            value.clone(),
            any::<bool>()
        )
            .prop_map(|(verb, key, flags, exptime, value, noreply)| Cmdline::Set {
                verb,
                key,
                flags,
                exptime,
                value,
                noreply
            }),
        (
            prop::sample::select(vec!["get", "gets"]),
            prop::collection::vec(key(), 1..8)
        )
            .prop_map(|(verb, keys)| Cmdline::Get { verb, keys }),
        (key(), any::<bool>()).prop_map(|(key, noreply)| Cmdline::Delete { key, noreply }),
        (
            key(),
            prop::collection::vec(
                prop::sample::select(vec!["v", "f", "k", "O123", "t", "s"]),
                0..5
            )
            .prop_map(|mut f| {
                // memcached refuses a repeated flag; the generator makes legal commands.
                f.sort();
                f.dedup();
                f
            }),
            any::<bool>()
        )
            .prop_map(|(key, flags, quiet)| Cmdline::Mg { key, flags, quiet }),
        (key(), value, any::<bool>()).prop_map(|(key, value, quiet)| Cmdline::Ms {
            key,
            value,
            quiet
        }),
    ]
}

/// Parses one frame out of `buf` the way the client does.
fn parse_one(buf: &[u8]) -> Option<(usize, Parsed)> {
    match parse(buf, &limits()) {
        Step::Frame { len, raw } => {
            let frame = Bytes::copy_from_slice(&buf[..len]);
            Some((len, raw.into_parsed(&frame)))
        }
        _ => None,
    }
}

/// The meta line a client's meta command becomes (without the router's opaque).
fn meta_line(k: &KeyedRequest) -> Vec<u8> {
    match &k.op {
        Op::Meta(m) => [&m.line[..], &m.data[..]].concat(),
        other => panic!("not meta: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_or_overrun(buf in prop::collection::vec(any::<u8>(), 0..3000)) {
        match parse(&buf, &limits()) {
            Step::Frame { len, raw } => {
                prop_assert!(len > 0 && len <= buf.len());
                let frame = Bytes::copy_from_slice(&buf[..len]);
                let _ = raw.into_parsed(&frame);
            }
            Step::Swallow { len, .. } => prop_assert!(len > 0 && len <= buf.len()),
            Step::Incomplete | Step::Close => {}
        }
    }

    #[test]
    fn command_shaped_garbage_never_panics(
        verb in prop::sample::select(vec!["get", "set", "cas", "mg", "ms", "md", "ma", "me", "gat", "delete", "incr", "touch", "flush_all", "verbosity", "stats"]),
        rest in prop::collection::vec(prop_oneof![Just(b' '), Just(b'q'), Just(b'b'), Just(b'1'), Just(b'-'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..300),
    ) {
        let mut buf = verb.as_bytes().to_vec();
        buf.extend_from_slice(&rest);
        if let Step::Frame { len, raw } = parse(&buf, &limits()) {
            prop_assert!(len <= buf.len());
            let frame = Bytes::copy_from_slice(&buf[..len]);
            let _ = raw.into_parsed(&frame);
        }
    }

    #[test]
    fn well_formed_commands_round_trip(c in cmdline()) {
        let bytes = c.bytes();
        // Every proper prefix is incomplete: nothing is acted on early.
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            prop_assert!(matches!(parse(&bytes[..cut], &limits()), Step::Incomplete));
        }
        let (len, parsed) = parse_one(&bytes).expect("a whole frame");
        prop_assert_eq!(len, bytes.len());
        match (&c, parsed) {
            (Cmdline::Set { key, noreply, value, flags, exptime, .. }, Parsed::Route(Request::Keyed(k), quiet)) => {
                prop_assert_eq!(&k.key[..], &key[..]);
                prop_assert_eq!(quiet == Quiet::All, *noreply);
                match &k.op {
                    Op::Store { flags: f, exptime: e, data, .. } => {
                        prop_assert_eq!(*f, *flags);
                        prop_assert_eq!(*e, *exptime);
                        prop_assert_eq!(&data[..], &[&value[..], b"\r\n"].concat()[..]);
                    }
                    other => prop_assert!(false, "not a store: {:?}", other),
                }
            }
            (Cmdline::Get { keys, verb }, Parsed::Route(Request::Keyed(k), _)) => {
                prop_assert_eq!(keys.len(), 1);
                prop_assert_eq!(&k.key[..], &keys[0][..]);
                let is_cas = matches!(k.op, Op::Get { cas: true, touch: None });
                prop_assert_eq!(is_cas, *verb == "gets");
            }
            (Cmdline::Get { keys, .. }, Parsed::Route(Request::MultiGet(m), _)) => {
                let got: Vec<Vec<u8>> = m.keys.iter().map(|k| k.to_vec()).collect();
                prop_assert_eq!(&got, keys);
            }
            (Cmdline::Delete { key, noreply }, Parsed::Route(Request::Keyed(k), quiet)) => {
                prop_assert_eq!(&k.key[..], &key[..]);
                prop_assert_eq!(quiet == Quiet::All, *noreply);
            }
            (Cmdline::Mg { key, quiet, .. }, Parsed::Route(Request::Keyed(k), q)) => {
                prop_assert_eq!(&k.key[..], &key[..]);
                prop_assert_eq!(q == Quiet::Miss, *quiet);
                let line = meta_line(&k);
                prop_assert!(!line.ends_with(b" q"));
                prop_assert!(!line.windows(5).any(|w| w == b" O123"));
            }
            (Cmdline::Ms { key, value, quiet }, Parsed::Route(Request::Keyed(k), q)) => {
                prop_assert_eq!(&k.key[..], &key[..]);
                prop_assert_eq!(q == Quiet::Success, *quiet);
                let line = meta_line(&k);
                prop_assert!(line.ends_with(&[&value[..], b"\r\n"].concat()));
            }
            (c, p) => prop_assert!(false, "{:?} parsed as {:?}", c, p),
        }
    }

    #[test]
    fn a_stream_parses_the_same_however_it_is_chunked(
        cmds in prop::collection::vec(cmdline(), 1..10),
        cuts in prop::collection::vec(1usize..200, 1..20),
    ) {
        let stream: Vec<u8> = cmds.iter().flat_map(|c| c.bytes()).collect();
        // Whole stream at once.
        let mut whole = Vec::new();
        let mut pos = 0;
        while let Some((len, _)) = parse_one(&stream[pos..]) {
            whole.push(len);
            pos += len;
        }
        prop_assert_eq!(pos, stream.len());
        prop_assert_eq!(whole.len(), cmds.len());
        // Bytes arriving in chunks.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut fed = 0;
        let mut i = 0;
        while fed < stream.len() {
            let n = cuts[i % cuts.len()].min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            i += 1;
            while let Some((len, _)) = parse_one(&buf) {
                got.push(len);
                buf.drain(..len);
            }
        }
        prop_assert_eq!(got, whole);
    }
}

#[test]
fn oversized_values_are_swallowed_not_buffered() {
    let step = parse(b"set k 0 0 100000\r\n", &limits());
    assert!(matches!(
        step,
        Step::Swallow { len: 18, drain: 100002, reply, .. } if reply == TOO_LARGE
    ));
}

fn reply_of(buf: &[u8]) -> Vec<u8> {
    match parse(buf, &limits()) {
        Step::Frame {
            raw: Raw::Reply(r), ..
        } => r.to_vec(),
        Step::Swallow { reply, .. } => reply.to_vec(),
        other => panic!("{:?} -> {other:?}", String::from_utf8_lossy(buf)),
    }
}

#[test]
fn what_memcached_refuses_is_refused_here_with_its_words() {
    // 17 O flags: too many tokens, and the value is NOT swallowed (memcached runs it).
    let mut ms = b"ms k 8".to_vec();
    for i in 0..17 {
        ms.extend_from_slice(format!(" O{i}").as_bytes());
    }
    ms.extend_from_slice(b"\r\nget key5\r\n");
    match parse(&ms, &limits()) {
        Step::Frame {
            len,
            raw: Raw::Reply(r),
        } => {
            assert_eq!(r, b"CLIENT_ERROR options flags too long\r\n");
            assert_eq!(
                &ms[len..],
                b"get key5\r\n",
                "the value is parsed as a command next"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        reply_of(b"mg k v q q\r\n"),
        b"CLIENT_ERROR duplicate flag\r\n"
    );
    assert_eq!(
        reply_of(b"ms k 2 q q\r\nab\r\n"),
        b"CLIENT_ERROR duplicate flag\r\n"
    );
    assert_eq!(
        reply_of(b"ms k 2 Zx\r\nab\r\n"),
        b"CLIENT_ERROR invalid flag\r\n"
    );
    assert_eq!(
        reply_of(b"md k q q\r\n"),
        b"CLIENT_ERROR invalid or duplicate flag\r\n"
    );
    assert_eq!(
        reply_of(b"ms k 2 MX\r\nab\r\n"),
        b"CLIENT_ERROR invalid mode for ms M token\r\n"
    );
    // A NUL ends the line for memcached: `noreply` seen, nothing answered.
    match parse(b"incr k 1 noreply\0junk\r\n", &limits()) {
        Step::Frame {
            raw: Raw::Keyed { quiet, .. },
            ..
        } => assert_eq!(quiet, Quiet::All),
        other => panic!("{other:?}"),
    }
    // Numbers as strtol reads them.
    assert!(matches!(
        parse(b"set k +1 0 1\r\nx\r\n", &limits()),
        Step::Frame {
            raw: Raw::Keyed {
                op: RawOp::Store { flags: 1, .. },
                ..
            },
            ..
        }
    ));
    assert!(matches!(
        parse(b"gat +5 k\r\n", &limits()),
        Step::Frame {
            raw: Raw::Keyed {
                op: RawOp::Get { touch: Some(5), .. },
                ..
            },
            ..
        }
    ));
    assert_eq!(reply_of(b"gat 5\r\n"), b"END\r\n");
    assert_eq!(reply_of(b"gat\r\n"), b"ERROR\r\n");
    assert!(matches!(
        parse(b"version foo\r\n", &limits()),
        Step::Frame {
            raw: Raw::Version,
            ..
        }
    ));
    assert!(matches!(
        parse(b"quit foo\r\n", &limits()),
        Step::Frame { raw: Raw::Quit, .. }
    ));
    // Keys with control bytes are keys to memcached.
    assert!(matches!(
        parse(b"get a\tb\x01\x7f\r\n", &limits()),
        Step::Frame {
            raw: Raw::Keyed { .. },
            ..
        }
    ));
    // ms over the item size deletes the old value in every mode.
    match parse(b"ms k 9999 MA\r\n", &limits()) {
        Step::Swallow { delete, reply, .. } => {
            assert_eq!(reply, TOO_LARGE);
            assert_eq!(delete.as_deref(), Some(&b"k"[..]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_multi_get_has_no_token_limit() {
    let mut line = b"gat 10".to_vec();
    for i in 0..2000 {
        line.extend_from_slice(format!(" key:{i:06}").as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    match parse(&line, &limits()) {
        Step::Frame {
            raw: Raw::MultiGet { keys, touch, .. },
            ..
        } => {
            assert_eq!(keys.len(), 2000);
            assert_eq!(touch, Some(10));
        }
        other => panic!("{other:?}"),
    }
}
