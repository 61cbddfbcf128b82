// Package timeline records the end-to-end scenario second by second — the
// load offered and acknowledged, what the HPAs see and do — as a CSV file
// and a chart a person can read at a glance.
package timeline

import (
	"encoding/csv"
	"fmt"
	"image/color"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Row is one sample.
type Row struct {
	Seconds         float64
	OfferedRPS      float64 // arrivals per second sent by the load
	AckedRPS        float64 // purchases acknowledged (201) per second
	PerPodRPS       float64 // the adapter's flask_http_request_per_second, mean over web pods
	WebDesired      int32
	WebCurrent      int32
	Lag             float64 // kafka_consumergroup_lag as the adapter serves it
	ConsumerDesired int32
	ConsumerCurrent int32
}

// Header is the CSV's first line.
var Header = []string{"seconds", "offered_rps", "acked_rps", "per_pod_rps", "web_desired", "web_current", "lag", "consumer_desired", "consumer_current"}

// WriteCSV writes rows under Header.
func WriteCSV(path string, rows []Row) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write(Header)
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	fi := func(v int32) string { return strconv.Itoa(int(v)) }
	for _, r := range rows {
		_ = w.Write([]string{ff(r.Seconds), ff(r.OfferedRPS), ff(r.AckedRPS), ff(r.PerPodRPS),
			fi(r.WebDesired), fi(r.WebCurrent), ff(r.Lag), fi(r.ConsumerDesired), fi(r.ConsumerCurrent)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

var (
	blue   = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	orange = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	green  = color.RGBA{R: 44, G: 160, B: 44, A: 255}
	red    = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	purple = color.RGBA{R: 148, G: 103, B: 189, A: 255}
	grey   = color.RGBA{R: 127, G: 127, B: 127, A: 255}
)

type series struct {
	name   string
	color  color.Color
	dashed bool
	value  func(Row) float64
}

func panel(title, ylabel string, rows []Row, ss []series) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds since the load started"
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = false
	p.Add(plotter.NewGrid())
	p.X.Tick.Marker = plainTicks{}
	p.Y.Tick.Marker = plainTicks{}
	top := 1.0
	for _, s := range ss {
		pts := make(plotter.XYs, len(rows))
		for i, r := range rows {
			pts[i].X, pts[i].Y = r.Seconds, s.value(r)
			top = max(top, pts[i].Y)
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.Color = s.color
		l.Width = vg.Points(1.5)
		if s.dashed {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		p.Add(l)
		p.Legend.Add(s.name, l)
	}
	// Room above the data for the legend.
	p.Y.Max = top * 1.35
	return p, nil
}

// plainTicks labels the default ticks without trailing zeros (250, not
// 250.00).
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'g', -1, 64)
		}
	}
	return ts
}

// DrawPNG draws the three stories of a run in one picture: the web
// server's load and per-pod rate against the target, both Deployments'
// replicas, and the consumer lag.
func DrawPNG(path, title string, rows []Row, target float64) error {
	webRate, err := panel(title+": web server", "requests per second", rows, []series{
		{"offered (all pods)", grey, false, func(r Row) float64 { return r.OfferedRPS }},
		{"acknowledged (all pods)", blue, false, func(r Row) float64 { return r.AckedRPS }},
		{"per pod, as the HPA sees it", orange, false, func(r Row) float64 { return r.PerPodRPS }},
		{fmt.Sprintf("HPA target per pod (%g)", target), red, true, func(Row) float64 { return target }},
	})
	if err != nil {
		return err
	}
	replicas, err := panel("replicas", "pods", rows, []series{
		{"web server desired", orange, true, func(r Row) float64 { return float64(r.WebDesired) }},
		{"web server current", orange, false, func(r Row) float64 { return float64(r.WebCurrent) }},
		{"consumer desired", purple, true, func(r Row) float64 { return float64(r.ConsumerDesired) }},
		{"consumer current", purple, false, func(r Row) float64 { return float64(r.ConsumerCurrent) }},
	})
	if err != nil {
		return err
	}
	lag, err := panel("consumer group lag", "messages", rows, []series{
		{"kafka_consumergroup_lag", green, false, func(r Row) float64 { return r.Lag }},
	})
	if err != nil {
		return err
	}
	const w, h = 10 * vg.Inch, 11 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 3, Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(12), PadY: vg.Points(12)}
	canvases := plot.Align([][]*plot.Plot{{webRate}, {replicas}, {lag}}, tiles, dc)
	webRate.Draw(canvases[0][0])
	replicas.Draw(canvases[1][0])
	lag.Draw(canvases[2][0])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
