package main

import (
	"errors"
	"strings"
	"testing"
)

func settingsFrom(env map[string]string, files map[string]string) (settings, error) {
	return readSettings(func(k string) string { return env[k] }, func(name string) ([]byte, error) {
		if v, ok := files[name]; ok {
			return []byte(v), nil
		}
		return nil, errors.New("no such file")
	})
}

func TestTheOfficialImagesVariables(t *testing.T) {
	s, err := settingsFrom(map[string]string{"POSTGRES_PASSWORD": "pw", "POSTGRES_DB": "purchases", "PGDATA": "/data/pgdata"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.user != "postgres" || s.db != "purchases" || s.data != "/data/pgdata" || s.authMethod != "scram-sha-256" || s.password != "pw" {
		t.Fatalf("settings %+v", s)
	}
	// POSTGRES_DB defaults to the user; the password may come from a file
	// (a mounted Secret, its trailing newline dropped).
	s, err = settingsFrom(map[string]string{"POSTGRES_USER": "app", "POSTGRES_PASSWORD_FILE": "/run/secrets/pw"}, map[string]string{"/run/secrets/pw": "s3cret\n"})
	if err != nil {
		t.Fatal(err)
	}
	if s.db != "app" || s.password != "s3cret" || s.data != defaultData {
		t.Fatalf("settings %+v", s)
	}
}

func TestNoPasswordIsRefusedUnlessTrustIsAsked(t *testing.T) {
	if _, err := settingsFrom(map[string]string{}, nil); err == nil || !strings.Contains(err.Error(), "POSTGRES_PASSWORD") {
		t.Fatalf("no password: %v, want a refusal naming POSTGRES_PASSWORD", err)
	}
	if _, err := settingsFrom(map[string]string{"POSTGRES_HOST_AUTH_METHOD": "trust"}, nil); err != nil {
		t.Fatalf("trust without a password: %v", err)
	}
	if _, err := settingsFrom(map[string]string{"POSTGRES_PASSWORD": "a", "POSTGRES_PASSWORD_FILE": "/f"}, map[string]string{"/f": "b"}); err == nil {
		t.Fatal("both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE: accepted, want a refusal")
	}
}

func TestNamesAreQuoted(t *testing.T) {
	if got := quoteIdent(`we"ird`); got != `"we""ird"` {
		t.Fatalf("quoteIdent: %s", got)
	}
}
