// Package store keeps purchases in PostgreSQL or SQLite with one set of SQL
// statements: inserts are idempotent by purchase id, so a message Kafka
// delivers twice is stored once.
package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"

	"github.com/purchase-system/purchase-system/servicekit/purchase"
)

// DefaultSQLitePath is where purchases are kept when DATABASE_URL is unset:
// a file in the working directory, so a fresh machine needs no database
// server.
const DefaultSQLitePath = "purchases.db"

// Record is a purchase with the Kafka position it was read from, kept for
// tracing a row back to its message.
type Record struct {
	purchase.Purchase
	Partition int32
	Offset    int64
}

// Store is a purchase store over database/sql.
type Store struct {
	db      *sql.DB
	dialect dialect
	// KeyRetention is how long an Idempotency-Key stands for its purchase
	// (ClaimRetention by default): a retry within it gets that purchase,
	// a use after it a new one.
	KeyRetention time.Duration
	// now is the clock claims are dated by (tests set it).
	now func() time.Time
	// beforeCommit, in tests, holds an insert between its rows and its
	// commit (a slow writer).
	beforeCommit func()
}

// dialect holds the little that differs between the two databases.
type dialect struct {
	name string
	// lockMigrations serialises concurrent migrations across replicas;
	// SQLite needs none (its write lock does it).
	lockMigrations string
	// seq is the column that numbers purchases in the order they were
	// stored (committed), which Page walks; seqMigration adds it.
	seq, seqMigration string
	// lockInserts makes insert transactions take their sequence numbers
	// and commit one after another: two writers' numbers would otherwise
	// commit out of order, and a reader past the higher one would never
	// see the lower. SQLite needs none: it has one writer at a time.
	lockInserts string
}

// DefaultConnectTimeout bounds each PostgreSQL connection attempt when
// DATABASE_URL sets no connect_timeout.
const DefaultConnectTimeout = 5 * time.Second

// Open connects to the database named by databaseURL: postgres://… or
// postgresql://… (pgx), sqlite:///abs/path or sqlite:rel/path (pure-Go
// SQLite), or "" for DefaultSQLitePath. It checks the connection and
// migrates the schema.
func Open(ctx context.Context, databaseURL string) (*Store, error) {
	driver, dsn, d, err := parseURL(databaseURL)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("opening %s database: %w", d.name, err)
	}
	if d.name == "sqlite" {
		// One writer at a time is all SQLite allows; a single connection
		// avoids "database is locked" between our own goroutines.
		db.SetMaxOpenConns(1)
	} else {
		db.SetMaxOpenConns(8)
		db.SetConnMaxIdleTime(5 * time.Minute)
	}
	s := &Store{db: db, dialect: d}
	if err := s.Ping(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrating %s schema: %w", d.name, err)
	}
	return s, nil
}

// CheckURL reports what is wrong with a DATABASE_URL without connecting.
func CheckURL(databaseURL string) error {
	_, _, _, err := parseURL(databaseURL)
	return err
}

func parseURL(raw string) (driver, dsn string, d dialect, err error) {
	if raw == "" {
		raw = "sqlite:" + DefaultSQLitePath
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", dialect{}, fmt.Errorf("DATABASE_URL is not a URL: %w", err)
	}
	switch u.Scheme {
	case "postgres", "postgresql":
		// Each connection attempt gets a bound unless the URL sets one:
		// without it a dial whose SYN is dropped (a pod whose
		// NetworkPolicy the enforcer has not programmed yet, a server
		// gone from the network) waits out the kernel's SYN retries,
		// about 2 minutes, before the next try.
		if q := u.Query(); !q.Has("connect_timeout") {
			q.Set("connect_timeout", strconv.Itoa(int(DefaultConnectTimeout/time.Second)))
			u.RawQuery = q.Encode()
			raw = u.String()
		}
		return "pgx", raw, dialect{name: "postgres", lockMigrations: "SELECT pg_advisory_xact_lock(7072011)",
			seq: "seq", seqMigration: `ALTER TABLE purchases ADD COLUMN IF NOT EXISTS seq BIGSERIAL;
				CREATE INDEX IF NOT EXISTS purchases_by_seq ON purchases (seq)`,
			lockInserts: "SELECT pg_advisory_xact_lock(7072012)"}, nil
	case "sqlite", "sqlite3":
		path := u.Path
		if u.Opaque != "" { // sqlite:relative/path
			path = u.Opaque
		}
		if u.Host != "" && u.Host != "localhost" { // sqlite://relative/path, a common slip
			path = filepath.Join(u.Host, path)
		}
		if path == "" {
			return "", "", dialect{}, errors.New("DATABASE_URL: sqlite URL has no file path (use sqlite:///abs/path or sqlite:rel/path)")
		}
		// WAL lets readers proceed during writes; synchronous=FULL makes a
		// committed batch survive power loss before its Kafka offsets are
		// committed.
		q := url.Values{}
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(FULL)")
		q.Add("_pragma", "busy_timeout(10000)")
		// SQLite numbers rows itself (rowid, one more than the largest,
		// under its single writer): no column to add.
		return "sqlite", "file:" + path + "?" + q.Encode(), dialect{name: "sqlite", seq: "rowid"}, nil
	}
	return "", "", dialect{}, fmt.Errorf("DATABASE_URL: unsupported scheme %q (use postgres:// or sqlite://)", u.Scheme)
}

// Dialect names the database behind the store: "postgres" or "sqlite".
func (s *Store) Dialect() string { return s.dialect.name }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("%s database unreachable: %w", s.dialect.name, err)
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// migrations are applied in order, each once, inside one transaction.
var migrations = []func(d dialect) string{
	func(dialect) string {
		return `CREATE TABLE IF NOT EXISTS purchases (
		id TEXT PRIMARY KEY,
		userid TEXT NOT NULL,
		username TEXT NOT NULL,
		price DOUBLE PRECISION NOT NULL,
		ts_unix_nano BIGINT NOT NULL,
		kafka_partition INTEGER NOT NULL,
		kafka_offset BIGINT NOT NULL
	);
	CREATE INDEX IF NOT EXISTS purchases_by_user ON purchases (userid, ts_unix_nano DESC, id DESC);
	CREATE INDEX IF NOT EXISTS purchases_by_time ON purchases (ts_unix_nano, id);`
	},
	// Storage order, for paging (Page).
	func(d dialect) string { return d.seqMigration },
	// Idempotency keys: which purchase each (user, key) stands for,
	// decided once (Claim).
	func(dialect) string {
		return `CREATE TABLE IF NOT EXISTS purchase_claims (
		userid TEXT NOT NULL,
		idem_key TEXT NOT NULL,
		id TEXT NOT NULL,
		username TEXT NOT NULL,
		price DOUBLE PRECISION NOT NULL,
		ts_unix_nano BIGINT NOT NULL,
		PRIMARY KEY (userid, idem_key)
	)`
	},
	// When each key was claimed, for its retention (KeyRetention); keys
	// claimed before this column existed count as claimed when their
	// purchase was made (the web server claims a key as it takes the
	// purchase).
	func(dialect) string {
		return `ALTER TABLE purchase_claims ADD COLUMN claimed_unix_nano BIGINT NOT NULL DEFAULT 0;
	UPDATE purchase_claims SET claimed_unix_nano = ts_unix_nano;
	CREATE INDEX IF NOT EXISTS purchase_claims_by_age ON purchase_claims (claimed_unix_nano)`
	},
}

// ClaimRetention is how long an Idempotency-Key is kept by default, as
// payment APIs keep theirs (Stripe: 24 hours): long enough for any
// client's retries, short enough that the table of keys stays small.
const ClaimRetention = 24 * time.Hour

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if s.dialect.lockMigrations != "" {
		if _, err := tx.ExecContext(ctx, s.dialect.lockMigrations); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
		return err
	}
	var applied int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&applied); err != nil {
		return err
	}
	if applied > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this program knows (%d): refusing to run an older consumer against it", applied, len(migrations))
	}
	for v := applied + 1; v <= len(migrations); v++ {
		for _, stmt := range strings.Split(migrations[v-1](s.dialect), ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migration %d: %w", v, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, v); err != nil {
			return err
		}
	}
	return tx.Commit()
}

const insertColumns = 7

// MaxBatch is the most records one Insert statement carries (PostgreSQL
// allows 65535 bind parameters, SQLite 32766).
const MaxBatch = 1000

// Insert stores records, skipping ids already stored, in one transaction.
// It returns how many were new.
func (s *Store) Insert(ctx context.Context, recs []Record) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("%s: begin: %w", s.dialect.name, err)
	}
	defer tx.Rollback()
	if s.dialect.lockInserts != "" {
		if _, err := tx.ExecContext(ctx, s.dialect.lockInserts); err != nil {
			return 0, fmt.Errorf("%s: waiting for the insert lock: %w", s.dialect.name, err)
		}
	}
	inserted := 0
	for start := 0; start < len(recs); start += MaxBatch {
		chunk := recs[start:min(start+MaxBatch, len(recs))]
		res, err := tx.ExecContext(ctx, insertSQL(len(chunk)), insertArgs(chunk)...)
		if err != nil {
			return 0, fmt.Errorf("%s: inserting %d purchases: %w", s.dialect.name, len(chunk), err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, err
		}
		inserted += int(n)
	}
	if s.beforeCommit != nil {
		s.beforeCommit()
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("%s: commit: %w", s.dialect.name, err)
	}
	return inserted, nil
}

func insertSQL(n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO purchases (id, userid, username, price, ts_unix_nano, kafka_partition, kafka_offset) VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for c := range insertColumns {
			if c > 0 {
				b.WriteByte(',')
			}
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(i*insertColumns + c + 1))
		}
		b.WriteByte(')')
	}
	b.WriteString(" ON CONFLICT (id) DO NOTHING")
	return b.String()
}

func insertArgs(recs []Record) []any {
	args := make([]any, 0, len(recs)*insertColumns)
	for _, r := range recs {
		args = append(args, r.ID, r.UserID, r.Username, r.Price, r.Timestamp.UnixNano(), r.Partition, r.Offset)
	}
	return args
}

const selectColumns = "id, userid, username, price, ts_unix_nano"

func scanPurchases(rows *sql.Rows) ([]purchase.Purchase, error) {
	defer rows.Close()
	out := []purchase.Purchase{}
	for rows.Next() {
		var p purchase.Purchase
		var ts int64
		if err := rows.Scan(&p.ID, &p.UserID, &p.Username, &p.Price, &ts); err != nil {
			return nil, err
		}
		p.Timestamp = time.Unix(0, ts).UTC()
		out = append(out, p)
	}
	return out, rows.Err()
}

// UserPurchases returns up to limit of a user's purchases, newest first.
func (s *Store) UserPurchases(ctx context.Context, userID string, limit int) ([]purchase.Purchase, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+selectColumns+` FROM purchases WHERE userid = $1 ORDER BY ts_unix_nano DESC, id DESC LIMIT $2`,
		userID, limit)
	if err != nil {
		return nil, fmt.Errorf("%s: reading purchases of %q: %w", s.dialect.name, userID, err)
	}
	return scanPurchases(rows)
}

// Purchase reads one purchase of a user by its id; found is false when
// there is none.
func (s *Store) Purchase(ctx context.Context, userID, id string) (p purchase.Purchase, found bool, err error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+selectColumns+` FROM purchases WHERE id = $1 AND userid = $2`, id, userID)
	if err != nil {
		return p, false, fmt.Errorf("%s: reading purchase %s: %w", s.dialect.name, id, err)
	}
	ps, err := scanPurchases(rows)
	if err != nil || len(ps) == 0 {
		return p, false, err
	}
	return ps[0], true, nil
}

// Claim decides, once, which purchase a user's Idempotency-Key stands
// for: the first claim of (p.UserID, key) stores p as the key's purchase;
// every claim returns the key's purchase, the first one's, whatever it
// proposed. Concurrent claims of one key from any number of web server
// replicas agree (the primary key decides; a second insert waits for the
// first to commit, then finds its row).
func (s *Store) Claim(ctx context.Context, key string, p purchase.Purchase) (purchase.Purchase, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return purchase.Purchase{}, fmt.Errorf("%s: begin: %w", s.dialect.name, err)
	}
	defer tx.Rollback()
	now := s.clock()
	// A key past its retention stands for nothing any more: it is claimed
	// anew (a concurrent claim of it then waits on the insert below).
	if _, err := tx.ExecContext(ctx, `DELETE FROM purchase_claims WHERE userid = $1 AND idem_key = $2 AND claimed_unix_nano < $3`,
		p.UserID, key, now.Add(-s.retention()).UnixNano()); err != nil {
		return purchase.Purchase{}, fmt.Errorf("%s: expiring an idempotency key: %w", s.dialect.name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO purchase_claims (userid, idem_key, id, username, price, ts_unix_nano, claimed_unix_nano)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (userid, idem_key) DO NOTHING`,
		p.UserID, key, p.ID, p.Username, p.Price, p.Timestamp.UnixNano(), now.UnixNano()); err != nil {
		return purchase.Purchase{}, fmt.Errorf("%s: claiming an idempotency key: %w", s.dialect.name, err)
	}
	var got purchase.Purchase
	var ts int64
	if err := tx.QueryRowContext(ctx, `SELECT id, userid, username, price, ts_unix_nano FROM purchase_claims WHERE userid = $1 AND idem_key = $2`,
		p.UserID, key).Scan(&got.ID, &got.UserID, &got.Username, &got.Price, &ts); err != nil {
		return purchase.Purchase{}, fmt.Errorf("%s: reading an idempotency key's purchase: %w", s.dialect.name, err)
	}
	got.Timestamp = time.Unix(0, ts).UTC()
	if err := tx.Commit(); err != nil {
		return purchase.Purchase{}, fmt.Errorf("%s: commit: %w", s.dialect.name, err)
	}
	return got, nil
}

func (s *Store) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

func (s *Store) retention() time.Duration {
	if s.KeyRetention > 0 {
		return s.KeyRetention
	}
	return ClaimRetention
}

// ExpireClaims deletes the Idempotency-Keys past their retention, so the
// table holds about one retention's worth of keys; it returns how many
// went.
func (s *Store) ExpireClaims(ctx context.Context) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM purchase_claims WHERE claimed_unix_nano < $1`, s.clock().Add(-s.retention()).UnixNano())
	if err != nil {
		return 0, fmt.Errorf("%s: expiring idempotency keys: %w", s.dialect.name, err)
	}
	return res.RowsAffected()
}

// SetClock dates claims by now instead of the wall clock (tests).
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// Cursor is a position in the purchase log, in storage order: the
// purchases stored after it. The zero Cursor is the start.
type Cursor struct {
	Seq int64
}

// String encodes c for a URL; the encoding is opaque to clients.
func (c Cursor) String() string {
	if c == (Cursor{}) {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte("s" + strconv.FormatInt(c.Seq, 10)))
}

// ParseCursor decodes what Cursor.String produced.
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		if n, perr := strconv.ParseInt(strings.TrimPrefix(string(b), "s"), 10, 64); strings.HasPrefix(string(b), "s") && perr == nil && n > 0 {
			return Cursor{n}, nil
		}
	}
	return Cursor{}, errors.New("after: not a cursor returned by this API")
}

// Page returns up to limit purchases of all users after c, in the order
// they were stored, and the cursor of the next page (zero when this page is
// the last). A purchase stored later is never behind a cursor handed out
// earlier, whatever its timestamp (consumer lag, several partitions and
// web servers make timestamps arrive out of order).
func (s *Store) Page(ctx context.Context, after Cursor, limit int) ([]purchase.Purchase, Cursor, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+selectColumns+`, `+s.dialect.seq+` FROM purchases
		 WHERE `+s.dialect.seq+` > $1 ORDER BY `+s.dialect.seq+` LIMIT $2`, after.Seq, limit+1)
	if err != nil {
		return nil, Cursor{}, fmt.Errorf("%s: reading purchases: %w", s.dialect.name, err)
	}
	defer rows.Close()
	ps := []purchase.Purchase{}
	var seqs []int64
	for rows.Next() {
		var p purchase.Purchase
		var ts, seq int64
		if err := rows.Scan(&p.ID, &p.UserID, &p.Username, &p.Price, &ts, &seq); err != nil {
			return nil, Cursor{}, err
		}
		p.Timestamp = time.Unix(0, ts).UTC()
		ps, seqs = append(ps, p), append(seqs, seq)
	}
	if err := rows.Err(); err != nil || len(ps) <= limit {
		return ps, Cursor{}, err
	}
	return ps[:limit], Cursor{seqs[limit-1]}, nil
}
