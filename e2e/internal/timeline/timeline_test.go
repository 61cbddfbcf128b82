package timeline

import (
	"bytes"
	"encoding/csv"
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

func rows() []Row {
	var out []Row
	for i := range 100 {
		s := float64(3 * i)
		r := Row{Seconds: s, OfferedRPS: 350, AckedRPS: 349, PerPodRPS: min(s, 175), WebDesired: 2, WebCurrent: 2, Lag: s * 10, ConsumerDesired: 1, ConsumerCurrent: 1}
		if i > 40 {
			r.WebDesired, r.WebCurrent, r.ConsumerDesired = 4, 4, 5
		}
		out = append(out, r)
	}
	return out
}

func TestCSVHasTheColumnsInOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "timeline.csv")
	if err := WriteCSV(path, rows()); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := "seconds,offered_rps,acked_rps,per_pod_rps,web_desired,web_current,lag,consumer_desired,consumer_current"
	if got := string(bytes.SplitN(b, []byte("\n"), 2)[0]); got != want || len(recs) != 101 {
		t.Fatalf("header %q, %d records", got, len(recs))
	}
	if got := recs[50]; got[0] != "147.0" || got[4] != "4" || got[7] != "5" {
		t.Fatalf("row 50: %v", got)
	}
}

func TestChartIsAPNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "timeline.png")
	if err := DrawPNG(path, "test", rows(), 100); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 500 || b.Dy() < 500 {
		t.Fatalf("image %v", b)
	}
}
