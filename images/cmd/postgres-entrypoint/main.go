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
