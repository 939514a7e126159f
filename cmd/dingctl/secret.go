package main

import (
	"flag"
	"fmt"
	"io"
	"time"
)

// secret runs the secret chat subcommands. Admins see a chat's metadata
// (members and their pseudonyms, level, burn delay, live message
// counts), never a secret message's content.
func secret(g *globals, args []string, out io.Writer) error {
	if len(args) == 0 {
		return exitError{2, "secret: want create, list or show"}
	}
	switch args[0] {
	case "create":
		return secretCreate(g, args[1:], out)
	case "list":
		return secretList(g, args[1:], out)
	case "show":
		return secretShow(g, args[1:], out)
	}
	return exitError{2, "secret: unknown subcommand " + args[0]}
}

func secretCreate(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("secret create", flag.ContinueOnError)
	from := fs.String("from", "", "the user who opens the chat")
	to := fs.String("to", "", "the other participant")
	level := fs.Int("level", 0, "privacy level: 1, 2 or 3")
	burn := fs.Duration("burn-after", 0, "burn delay after the first read, whole seconds (level 3 only; default: the server's)")
	asJSON := fs.Bool("json", false, "print the chat's metadata as JSON instead of its id")
	if _, err := parse(fs, g, args); err != nil {
		return err
	}
	if *from == "" || *to == "" || *level == 0 {
		return exitError{2, "secret create: --from, --to and --level are required"}
	}
	if *burn < 0 || *burn%time.Second != 0 {
		return exitError{2, "secret create: --burn-after must be whole seconds, like 10s"}
	}
	var res map[string]any
	if err := g.call("POST", "/v1/secret-chats", map[string]any{
		"from": *from, "to": *to, "level": *level, "burn_after_s": int64(*burn / time.Second),
	}, &res); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(out, res)
	}
	_, err := fmt.Fprintln(out, res["id"])
	return err
}

func secretList(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("secret list", flag.ContinueOnError)
	user := fs.String("user", "", "user id")
	if _, err := parse(fs, g, args); err != nil {
		return err
	}
	if *user == "" {
		return exitError{2, "secret list: --user is required"}
	}
	return g.printCall(out, "GET", idPath("/v1/users", *user)+"/secret-chats", nil)
}

func secretShow(g *globals, args []string, out io.Writer) error {
	pos, err := parse(flag.NewFlagSet("secret show", flag.ContinueOnError), g, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return exitError{2, "secret show: want exactly one chat id"}
	}
	return g.printCall(out, "GET", idPath("/v1/secret-chats", pos[0]), nil)
}
