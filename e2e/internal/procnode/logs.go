package procnode

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
)

// openLog returns a container's log honouring kubectl logs' options:
// --tail, --limit-bytes and --follow (--since and --timestamps need
// per-line times, which a plain log file does not keep).
func openLog(ctx context.Context, path string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, errdefs.NotFoundf("no log yet at %s", path)
		}
		return nil, err
	}
	start := int64(0)
	if opts.Tail > 0 {
		start = tailOffset(f, opts.Tail)
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	var r io.Reader = f
	if opts.Follow {
		r = &follower{ctx: ctx, f: f}
	}
	if opts.LimitBytes > 0 {
		r = io.LimitReader(r, int64(opts.LimitBytes))
	}
	return struct {
		io.Reader
		io.Closer
	}{r, f}, nil
}

// tailOffset finds where the last n lines start.
func tailOffset(f *os.File, n int) int64 {
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	size := st.Size()
	buf := make([]byte, 64<<10)
	lines := 0
	for end := size; end > 0; {
		chunk := min(int64(len(buf)), end)
		end -= chunk
		if _, err := f.ReadAt(buf[:chunk], end); err != nil && err != io.EOF {
			return 0
		}
		b := buf[:chunk]
		for i := len(b) - 1; i >= 0; i-- {
			// The newline ending the file does not start a line.
			if b[i] == '\n' && end+int64(i) != size-1 {
				lines++
				if lines == n {
					return end + int64(i) + 1
				}
			}
		}
	}
	return 0
}

// follower reads a growing file until ctx ends.
type follower struct {
	ctx context.Context
	f   *os.File
}

func (fl *follower) Read(p []byte) (int, error) {
	for {
		n, err := fl.f.Read(p)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		select {
		case <-fl.ctx.Done():
			return 0, io.EOF
		case <-time.After(200 * time.Millisecond):
		}
	}
}
