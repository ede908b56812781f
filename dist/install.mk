# `make install` (issue 18), included by the Makefile: PREFIX (default /usr/local) and DESTDIR.
PREFIX  ?= /usr/local
DESTDIR ?=
SBINDIR := $(PREFIX)/sbin
MANDIR  := $(PREFIX)/share/man
UNITDIR := $(PREFIX)/lib/systemd/system
DOCDIR  := $(PREFIX)/share/doc/smtptap

.PHONY: install

# The unit names the binary where this install puts it.
install: $(BUILD)/$(PROG)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 $(BUILD)/$(PROG) $(DESTDIR)$(SBINDIR)/smtptap
	install -m 0644 smtptap.1 $(DESTDIR)$(MANDIR)/man1/smtptap.1
	sed 's#/usr/sbin/smtptap#$(SBINDIR)/smtptap#g' dist/smtptap.service > $(DESTDIR)$(UNITDIR)/smtptap.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/smtptap.service
	install -m 0644 dist/smtptap.conf.example $(DESTDIR)$(DOCDIR)/smtptap.conf.example
