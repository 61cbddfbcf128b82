// Command postgres-entrypoint starts PostgreSQL in the image built here
// (scripts/images.sh postgres, Debian's packages) with the contract of the
// official postgres image, so a manifest written for that image runs
// unchanged:
//
//   - on an empty PGDATA (default /var/lib/postgresql/data) it creates the
//     cluster: POSTGRES_USER (default postgres) as superuser with
//     POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE; refused when empty
//     unless POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_INITDB_ARGS passed
//     to initdb, POSTGRES_DB (default POSTGRES_USER) created, and
//     connections from the network with POSTGRES_HOST_AUTH_METHOD (default
//     scram-sha-256); listen_addresses='*'; encoding UTF8 with the C
//     locale (the image has no locale data; the official image's is
//     en_US.utf8: byte-order sorting instead of English rules);
//   - this image's addition: with POSTGRES_APP_USER (and
//     POSTGRES_APP_PASSWORD or POSTGRES_APP_PASSWORD_FILE), at every
//     start, that role exists with that password, may log in, is no
//     superuser (so no COPY ... TO PROGRAM, no reading the server's
//     files), and owns POSTGRES_DB and every table, sequence and view in
//     its public schema: an application connects as it, the superuser's
//     password stays in the database's own Secret, and a database first
//     initialised for the superuser is moved over;
//   - it then runs postgres with the container's arguments ("postgres" or
//     arguments starting with "-"); any other command is run as given.
//
// Unlike the official image it has no shell, so init scripts in
// /docker-entrypoint-initdb.d are refused with a message rather than
// silently skipped. It never runs as root: the image's user is postgres
// (999:999), as the official image's.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

const (
	bin         = "/usr/lib/postgresql/15/bin"
	defaultData = "/var/lib/postgresql/data"
	initScripts = "/docker-entrypoint-initdb.d"
)

// settings are the official image's variables.
type settings struct {
	data, user, password, db, authMethod string
	initdbArgs                           []string
}

func readSettings(getenv func(string) string, readFile func(string) ([]byte, error)) (settings, error) {
	s := settings{
		data:       or(getenv("PGDATA"), defaultData),
		user:       or(getenv("POSTGRES_USER"), "postgres"),
		password:   getenv("POSTGRES_PASSWORD"),
		authMethod: or(getenv("POSTGRES_HOST_AUTH_METHOD"), "scram-sha-256"),
		initdbArgs: strings.Fields(getenv("POSTGRES_INITDB_ARGS")),
	}
	if f := getenv("POSTGRES_PASSWORD_FILE"); f != "" {
		if s.password != "" {
			return s, errors.New("both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set: set one")
		}
		b, err := readFile(f)
		if err != nil {
			return s, fmt.Errorf("POSTGRES_PASSWORD_FILE: %w", err)
		}
		s.password = strings.TrimRight(string(b), "\r\n")
	}
	s.db = or(getenv("POSTGRES_DB"), s.user)
	if s.password == "" && s.authMethod != "trust" {
		return s, errors.New("the database is uninitialized and no superuser password is set: set POSTGRES_PASSWORD " +
			"(or POSTGRES_PASSWORD_FILE), or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection without one (never in production)")
	}
	return s, nil
}

// appSettings are this image's own variables: the application's role.
type appSettings struct{ user, password string }

func readAppSettings(getenv func(string) string, readFile func(string) ([]byte, error)) (appSettings, error) {
	a := appSettings{user: getenv("POSTGRES_APP_USER"), password: getenv("POSTGRES_APP_PASSWORD")}
	if f := getenv("POSTGRES_APP_PASSWORD_FILE"); f != "" {
		if a.password != "" {
			return a, errors.New("both POSTGRES_APP_PASSWORD and POSTGRES_APP_PASSWORD_FILE are set: set one")
		}
		b, err := readFile(f)
		if err != nil {
			return a, fmt.Errorf("POSTGRES_APP_PASSWORD_FILE: %w", err)
		}
		a.password = strings.TrimRight(string(b), "\r\n")
	}
	switch {
	case strings.ContainsAny(a.password, "\r\n"):
		return a, errors.New("POSTGRES_APP_PASSWORD holds a line break: single-user mode, which sets it, reads a statement a line")
	case a.user == "" && a.password != "":
		return a, errors.New("POSTGRES_APP_PASSWORD is set without POSTGRES_APP_USER: name the application's role")
	case a.user != "" && a.password == "":
		return a, fmt.Errorf("POSTGRES_APP_USER=%s without a password: set POSTGRES_APP_PASSWORD (or POSTGRES_APP_PASSWORD_FILE)", a.user)
	case a.user != "" && a.user == or(getenv("POSTGRES_USER"), "postgres"):
		return a, fmt.Errorf("POSTGRES_APP_USER=%s is the superuser: the application's role must be another one", a.user)
	}
	return a, nil
}

// appRoleSQL makes the application's role what it must be, in the
// cluster (statements for the postgres database) and in its database.
func appRoleSQL(a appSettings, db string) (cluster, inDB string) {
	role := quoteIdent(a.user)
	cluster = "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = " + quoteLiteral(a.user) + ") THEN CREATE ROLE " + role + "; END IF; END$$;\n" +
		"ALTER ROLE " + role + " WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD " + quoteLiteral(a.password) + ";\n" +
		"ALTER DATABASE " + quoteIdent(db) + " OWNER TO " + role + ";\n"
	// Tables, sequences and views the superuser created (a database
	// initialised before the application had a role of its own).
	inDB = "DO $$DECLARE r record; BEGIN FOR r IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace " +
		"WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm') AND pg_get_userbyid(c.relowner) <> " + quoteLiteral(a.user) + " LOOP " +
		"EXECUTE format('ALTER %s %s OWNER TO %I', CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, r.name, " + quoteLiteral(a.user) + "); " +
		"END LOOP; END$$;\n"
	return cluster, inDB
}

// ensureAppRole applies appRoleSQL in single-user mode, before the server
// starts.
func ensureAppRole(data string, a appSettings, db string) error {
	cluster, inDB := appRoleSQL(a, db)
	if err := command(filepath.Join(bin, "postgres"), []string{"--single", "-D", data, "postgres"}, cluster); err != nil {
		return fmt.Errorf("the application's role %s: %w", a.user, err)
	}
	if err := command(filepath.Join(bin, "postgres"), []string{"--single", "-D", data, db}, inDB); err != nil {
		return fmt.Errorf("giving %s the objects of database %s: %w", a.user, db, err)
	}
	fmt.Fprintf(os.Stderr, "postgres-entrypoint: role %s owns database %s (no superuser)\n", a.user, db)
	return nil
}

// quoteLiteral quotes a string for SQL.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// quoteIdent quotes a name for SQL.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// hbaLine lets every address connect with the method: as the official image,
// after initdb's local lines.
func hbaLine(method string) string {
	return "\n# Added by the image's entrypoint.\nhost all all all " + method + "\n"
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "postgres-entrypoint:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		args = append([]string{"postgres"}, args...)
	}
	if args[0] != "postgres" {
		path, err := exec.LookPath(args[0])
		if err != nil {
			return err
		}
		return syscall.Exec(path, args, os.Environ())
	}
	if os.Getuid() == 0 {
		return errors.New("PostgreSQL does not run as root: run the container as the image's user postgres (runAsUser: 999)")
	}
	data := or(os.Getenv("PGDATA"), defaultData)
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := initialise(); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	app, err := readAppSettings(os.Getenv, os.ReadFile)
	if err != nil {
		return err
	}
	if app.user != "" {
		if err := ensureAppRole(data, app, or(os.Getenv("POSTGRES_DB"), or(os.Getenv("POSTGRES_USER"), "postgres"))); err != nil {
			return err
		}
	}
	// argv[0] is the full path: postgres finds its installation from it
	// (a bare name would be looked up on a PATH the pod may have changed).
	postgres := filepath.Join(bin, "postgres")
	return syscall.Exec(postgres, append([]string{postgres, "-D", data}, args[1:]...), os.Environ())
}

func initialise() error {
	s, err := readSettings(os.Getenv, os.ReadFile)
	if err != nil {
		return err
	}
	if entries, _ := os.ReadDir(initScripts); len(entries) > 0 {
		return fmt.Errorf("%s has %d entries: this image has no shell to run init scripts; create the objects from the application instead", initScripts, len(entries))
	}
	if err := os.MkdirAll(s.data, 0o700); err != nil {
		return fmt.Errorf("PGDATA %s: %w (mount a volume the container's user can write, e.g. fsGroup: 999)", s.data, err)
	}
	pw, err := os.CreateTemp("", "pwfile")
	if err != nil {
		return err
	}
	defer os.Remove(pw.Name())
	if _, err := pw.WriteString(s.password + "\n"); err != nil {
		return err
	}
	if err := pw.Close(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "postgres-entrypoint: initialising a database cluster in %s (superuser %s, database %s)\n", s.data, s.user, s.db)
	initdb := append([]string{"-D", s.data, "--username", s.user, "--pwfile", pw.Name(), "--encoding", "UTF8", "--locale", "C"}, s.initdbArgs...)
	if err := command(filepath.Join(bin, "initdb"), initdb, ""); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	if err := appendFile(filepath.Join(s.data, "pg_hba.conf"), hbaLine(s.authMethod)); err != nil {
		return err
	}
	if err := appendFile(filepath.Join(s.data, "postgresql.conf"), "\nlisten_addresses = '*'\n"); err != nil {
		return err
	}
	if s.db != "postgres" {
		// Single-user mode: no server, no socket, no client program.
		sql := "CREATE DATABASE " + quoteIdent(s.db) + ";\n"
		if err := command(filepath.Join(bin, "postgres"), []string{"--single", "-D", s.data, "postgres"}, sql); err != nil {
			return fmt.Errorf("creating database %s: %w", s.db, err)
		}
	}
	return nil
}

func command(path string, args []string, stdin string) error {
	c := exec.Command(path, args...)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	return c.Run()
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
