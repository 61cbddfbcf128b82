package main

import (
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/realdeps"
)

// The image's entrypoint with Debian's PostgreSQL 15 (the packages the
// image is built from, on this machine): a database first initialised
// with the superuser alone, then started with POSTGRES_APP_USER, is moved
// over — the application's role owns it and the superuser's tables, and
// is no superuser: COPY ... TO PROGRAM, which runs a program on the
// database's machine, is refused to it.
func TestTheApplicationsRoleOwnsItsDatabaseAndIsNoSuperuser(t *testing.T) {
	for _, p := range []string{filepath.Join(bin, "postgres"), filepath.Join(bin, "psql")} {
		if _, err := os.Stat(p); err != nil {
			realdeps.Missing(t, "needs Debian's PostgreSQL 15 (%v): apt-get install postgresql-15", err)
		}
	}
	if os.Geteuid() != 0 {
		realdeps.Missing(t, "runs the entrypoint as the postgres user: needs root to switch to it")
	}
	pg, err := user.Lookup("postgres")
	if err != nil {
		realdeps.Missing(t, "no postgres user: %v", err)
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	dir, err := os.MkdirTemp("", "pg-entrypoint-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	entry := filepath.Join(dir, "entrypoint")
	if out, err := exec.Command("go", "build", "-o", entry, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, d := range []string{dir, filepath.Join(dir, "sock")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	start := func(env ...string) func() {
		t.Helper()
		cmd := exec.Command(entry, "postgres", "-p", port, "-k", filepath.Join(dir, "sock"), "-c", "listen_addresses=127.0.0.1")
		cmd.Env = append([]string{"PGDATA=" + filepath.Join(dir, "data"), "POSTGRES_PASSWORD=the-superusers", "POSTGRES_DB=purchases"}, env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		log := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			if exec.Command(filepath.Join(bin, "pg_isready"), "-h", "127.0.0.1", "-p", port).Run() == nil {
				break
			}
			if i > 150 {
				_ = cmd.Process.Kill()
				t.Fatalf("PostgreSQL not ready within 30 s:\n%s", log)
			}
			time.Sleep(200 * time.Millisecond)
		}
		return func() { _ = cmd.Process.Signal(syscall.SIGINT); _ = cmd.Wait() }
	}
	psql := func(role, password, sql string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "psql"), "-h", "127.0.0.1", "-p", port, "-U", role, "-d", "purchases", "-tAc", sql)
		cmd.Env = []string{"PGPASSWORD=" + password, "PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	// Before: the superuser's database, with a table of its own.
	stop := start()
	if out, err := psql("postgres", "the-superusers", "CREATE TABLE old_purchases (id text PRIMARY KEY); CREATE SEQUENCE old_seq"); err != nil {
		stop()
		t.Fatalf("as the superuser: %v %s", err, out)
	}
	stop()

	// After: started with the application's role.
	stop = start("POSTGRES_APP_USER=purchases", "POSTGRES_APP_PASSWORD=the-applications")
	defer stop()
	for sql, want := range map[string]string{
		"SELECT rolsuper FROM pg_roles WHERE rolname = current_user":                                               "f",
		"SELECT pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER')":                                  "f",
		"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()":                       "purchases",
		"SELECT string_agg(tableowner, ',') FROM pg_tables WHERE schemaname = 'public'":                            "purchases",
		"SELECT sequenceowner FROM pg_sequences WHERE sequencename = 'old_seq'":                                    "purchases",
		"INSERT INTO old_purchases VALUES ('p1') RETURNING id":                                                     "p1",
		"CREATE TABLE new_purchases (id text); SELECT tableowner FROM pg_tables WHERE tablename = 'new_purchases'": "purchases",
	} {
		if got, err := psql("purchases", "the-applications", sql); err != nil || !strings.Contains(got, want) {
			t.Errorf("as the application, %s: %q (%v), want %q", sql, got, err, want)
		}
	}
	out, err := psql("purchases", "the-applications", "COPY (SELECT 1) TO PROGRAM 'true'")
	if err == nil || !strings.Contains(out, "pg_execute_server_program") {
		t.Errorf("COPY ... TO PROGRAM as the application: %v %q, want it refused (pg_execute_server_program)", err, out)
	}
	// (Passwords are checked for connections from other addresses, as
	// in the official image, whose initdb trusts the container's own
	// loopback: TestPostgreSQLRefusesAWrongPassword tries one from
	// outside the pod.)
}
