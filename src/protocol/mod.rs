//! The MySQL wire codec, both sides: framing, handshake, authentication, and the few
//! packets shardgate builds itself. Result sets from backends are not decoded here: the
//! [`relay`] module walks their packet boundaries and passes the bytes on unchanged.

pub mod auth;
pub mod binary;
pub mod compress;
pub mod handshake;
pub mod packet;
pub mod relay;
pub mod sha2_auth;
pub mod stream;
pub mod tls;
pub mod wire;

/// Capability flags (`CLIENT_*`).
pub mod caps {
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const ODBC: u32 = 1 << 6;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const IGNORE_SIGPIPE: u32 = 1 << 12;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const RESERVED: u32 = 1 << 14;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    pub const CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;

    /// MariaDB extended capability (sent apart, in the handshake's filler bytes):
    /// column definitions carry extended type info (e.g. `format=json`).
    pub const MARIADB_EXTENDED_METADATA: u32 = 1 << 3;
    /// MariaDB extended capability: `COM_STMT_BULK_EXECUTE` (`session::prepared_bulk`).
    pub const MARIADB_STMT_BULK_OPERATIONS: u32 = 1 << 2;
    /// The MariaDB extended capabilities shardgate relays. Not PROGRESS (progress
    /// packets look like ERR to a relay).
    pub const MARIADB_RELAYABLE: u32 = MARIADB_EXTENDED_METADATA | MARIADB_STMT_BULK_OPERATIONS;

    /// What shardgate offers clients (plus `SSL` when TLS is configured, see
    /// [`super::tls`], and `LOCAL_FILES` when `local_infile` is on). Compression is
    /// zlib only ([`super::compress`]; no zstd). No MariaDB extended capabilities
    /// (`LONG_PASSWORD` set tells MariaDB clients this is a MySQL-style server).
    pub const SERVER_OFFERED: u32 = LONG_PASSWORD
        | FOUND_ROWS
        | LONG_FLAG
        | CONNECT_WITH_DB
        | NO_SCHEMA
        | COMPRESS
        | ODBC
        | IGNORE_SPACE
        | PROTOCOL_41
        | INTERACTIVE
        | IGNORE_SIGPIPE
        | TRANSACTIONS
        | RESERVED
        | SECURE_CONNECTION
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | PLUGIN_AUTH
        | CONNECT_ATTRS
        | PLUGIN_AUTH_LENENC_CLIENT_DATA
        | SESSION_TRACK
        | DEPRECATE_EOF;

    /// The client capabilities that change what a backend sends back or how it parses
    /// what it receives. A backend connection is opened with exactly the client's bits
    /// of this set, so its packets can be relayed raw; the pool keys connections by them.
    /// `LOCAL_FILES` is one: a backend asks a client for a file only if the client
    /// said it can send one (else it refuses LOAD DATA LOCAL itself, with 4166).
    pub const RELAY_SENSITIVE: u32 = FOUND_ROWS
        | LOCAL_FILES
        | LONG_FLAG
        | NO_SCHEMA
        | ODBC
        | IGNORE_SPACE
        | INTERACTIVE
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | SESSION_TRACK
        | DEPRECATE_EOF;

    /// Bits shardgate always sets towards a backend.
    pub const BACKEND_BASE: u32 = LONG_PASSWORD
        | PROTOCOL_41
        | TRANSACTIONS
        | SECURE_CONNECTION
        | PLUGIN_AUTH
        | PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CONNECT_WITH_DB;
}

/// Server status flags (`SERVER_STATUS_*`).
pub mod status {
    pub const IN_TRANS: u16 = 0x0001;
    pub const AUTOCOMMIT: u16 = 0x0002;
    pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
    /// A prepared statement's execute opened a cursor.
    pub const CURSOR_EXISTS: u16 = 0x0040;
    /// A `COM_STMT_FETCH` reached the cursor's last row.
    pub const LAST_ROW_SENT: u16 = 0x0080;
    /// `sql_mode` has `NO_BACKSLASH_ESCAPES`: clients escape quotes by doubling them,
    /// never with a backslash, when this is set.
    pub const NO_BACKSLASH_ESCAPES: u16 = 0x0200;
    pub const IN_TRANS_READONLY: u16 = 0x2000;
    pub const SESSION_STATE_CHANGED: u16 = 0x4000;
}

/// Command bytes (`COM_*`).
pub mod command {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;
    pub const RESET_CONNECTION: u8 = 0x1f;
}
