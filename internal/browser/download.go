package browser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
)

// maxDownloadBytes bounds what Download reads: a client profile with its
// certificates is a few KiB.
const maxDownloadBytes = 8 << 20

// Download clicks the element that selector (CSS) finds, a link or a
// button that makes the server send a file (Content-Disposition:
// attachment), waits until the browser has saved it and returns the file
// name that the server suggested and the file's bytes. The file is saved
// in the Browser's own folder, removed after the test.
func (b *Browser) Download(selector string) (name string, data []byte) {
	b.t.Helper()
	type result struct {
		name string
		data []byte
	}
	r := run(b, fmt.Sprintf("download with %q", selector), func(ctx context.Context, t *chromedp.Target) (result, error) {
		name, data, err := b.download(ctx, selector)
		return result{name, data}, err
	})
	return r.name, r.data
}

// download is the action of Download.
func (b *Browser) download(ctx context.Context, selector string) (string, []byte, error) {
	dir, err := os.MkdirTemp(b.root, "download")
	if err != nil {
		return "", nil, err
	}
	if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior:      browser.SetDownloadBehaviorBehaviorAllowAndName,
		DownloadPath:  dir,
		EventsEnabled: new(true),
	}); err != nil {
		return "", nil, fmt.Errorf("allow downloads: %w", err)
	}

	// The listener runs in the loop that reads the browser's messages: it
	// only records, under mu, and signals.
	var (
		mu        sync.Mutex
		suggested = map[string]string{} // GUID -> file name the server suggested
		done      = make(chan *browser.EventDownloadProgress, 1)
	)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := chromedp.ListenBrowser(lctx, func(ev any) {
		switch ev := ev.(type) {
		case *browser.EventDownloadWillBegin:
			mu.Lock()
			suggested[ev.GUID] = ev.SuggestedFilename
			mu.Unlock()
		case *browser.EventDownloadProgress:
			if ev.State == browser.DownloadProgressStateCompleted || ev.State == browser.DownloadProgressStateCanceled {
				select {
				case done <- ev:
				default:
				}
			}
		}
	}); err != nil {
		return "", nil, err
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(selector))); err != nil {
		return "", nil, err
	}
	var ev *browser.EventDownloadProgress
	select {
	case ev = <-done:
	case <-ctx.Done():
		return "", nil, fmt.Errorf("no download finished: %w", ctx.Err())
	}
	if ev.State != browser.DownloadProgressStateCompleted {
		return "", nil, fmt.Errorf("download %s was %s", ev.GUID, ev.State)
	}
	mu.Lock()
	name := suggested[ev.GUID]
	mu.Unlock()
	// allowAndName saves the file under its GUID, which is the browser's
	// word; keep it to one file name in dir.
	path := filepath.Join(dir, filepath.Base(ev.GUID))
	st, err := os.Stat(path)
	if err != nil {
		return "", nil, fmt.Errorf("downloaded file: %w", err)
	}
	if st.Size() > maxDownloadBytes {
		return "", nil, fmt.Errorf("downloaded file of %d bytes is over %d", st.Size(), maxDownloadBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	if name == "" {
		return "", nil, errors.New("the browser named no file")
	}
	return name, data, nil
}
